<?php
// MisarMail webhooks in PHP 8, standard library only (php-fpm, Apache, or for a try:
// WEBHOOK_SECRET=whsec_... php -S 0.0.0.0:8000 receiver.php).

const TOLERANCE_S = 5 * 60;

// Standard Webhooks: base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<raw body>".
function verified(string $secret, string $body): bool
{
    $id = $_SERVER['HTTP_WEBHOOK_ID'] ?? '';
    $timestamp = $_SERVER['HTTP_WEBHOOK_TIMESTAMP'] ?? '';
    if ($id === '' || !ctype_digit($timestamp) || abs(time() - (int) $timestamp) > TOLERANCE_S) {
        return false;
    }
    $key = base64_decode(substr($secret, strlen('whsec_')));
    $expected = base64_encode(hash_hmac('sha256', "$id.$timestamp.$body", $key, true));
    // One "v1,<base64>" per valid secret, space-separated, while MisarMail rotates a secret.
    foreach (explode(' ', $_SERVER['HTTP_WEBHOOK_SIGNATURE'] ?? '') as $entry) {
        [$version, $signature] = array_pad(explode(',', $entry, 2), 2, '');
        if ($version === 'v1' && hash_equals($expected, $signature)) {
            return true;
        }
    }
    return false;
}

$body = file_get_contents('php://input'); // the raw bytes: verify before parsing
if ($_SERVER['REQUEST_METHOD'] !== 'POST' || !verified(getenv('WEBHOOK_SECRET'), $body)) {
    http_response_code(400);
    exit;
}
$event = json_decode($body, true);
error_log("verified {$event['id']} {$event['type']}"); // deliveries repeat: dedupe on the id
http_response_code(204); // within 10 seconds, or MisarMail retries

# MisarMail webhooks in Ruby 3, standard library only (WEBrick: Debian's ruby has it; elsewhere
# `gem install webrick`, or call verified? from your Rails or Sinatra action).
# WEBHOOK_SECRET=whsec_... PORT=8000 ruby receiver.rb
require "json"
require "openssl"
require "webrick"

KEY = ENV.fetch("WEBHOOK_SECRET").delete_prefix("whsec_").unpack1("m") # base64
TOLERANCE_S = 5 * 60

# Standard Webhooks: base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<raw body>".
def verified?(id, timestamp, signatures, body)
  return false unless id && timestamp.to_s.match?(/\A\d+\z/)
  return false if (Time.now.to_i - timestamp.to_i).abs > TOLERANCE_S

  digest = OpenSSL::HMAC.digest("SHA256", KEY, "#{id}.#{timestamp}.#{body}")
  expected = [digest].pack("m0") # base64
  # One "v1,<base64>" per valid secret, space-separated, while MisarMail rotates a secret.
  signatures.to_s.split(" ").any? do |entry|
    version, signature = entry.split(",", 2)
    version == "v1" && OpenSSL.secure_compare(expected, signature.to_s)
  end
end

$stdout.sync = true
server = WEBrick::HTTPServer.new(BindAddress: ENV["HOST"], Port: Integer(ENV.fetch("PORT", "8000")))
server.mount_proc("/") do |req, res|
  body = req.body.to_s # the raw bytes: verify before parsing
  headers = req["webhook-id"], req["webhook-timestamp"], req["webhook-signature"]
  if req.request_method == "POST" && verified?(*headers, body)
    event = JSON.parse(body)
    puts "verified #{event["id"]} #{event["type"]}" # deliveries repeat: dedupe on the id
    res.status = 204 # within 10 seconds, or MisarMail retries
  else
    res.status = 400
  end
end
trap("TERM") { server.shutdown }
server.start

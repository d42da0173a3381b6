// MisarMail webhooks in Go 1.18+, standard library only.
// WEBHOOK_SECRET=whsec_... PORT=8000 go run receiver.go
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

const toleranceS = 5 * 60

// verified checks the Standard Webhooks signature: base64 HMAC-SHA256 of
// "<webhook-id>.<webhook-timestamp>.<raw body>".
func verified(key []byte, h http.Header, body []byte) bool {
	id, timestamp := h.Get("webhook-id"), h.Get("webhook-timestamp")
	t, err := strconv.ParseInt(timestamp, 10, 64)
	if id == "" || err != nil || t < time.Now().Unix()-toleranceS || t > time.Now().Unix()+toleranceS {
		return false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + timestamp + "."))
	mac.Write(body)
	expected := mac.Sum(nil)
	// One "v1,<base64>" per valid secret, space-separated, while MisarMail rotates a secret.
	for _, entry := range strings.Fields(h.Get("webhook-signature")) {
		version, signature, _ := strings.Cut(entry, ",")
		given, err := base64.StdEncoding.DecodeString(signature)
		if version == "v1" && err == nil && hmac.Equal(given, expected) {
			return true
		}
	}
	return false
}

func main() {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(os.Getenv("WEBHOOK_SECRET"), "whsec_"))
	if err != nil {
		log.Fatal("WEBHOOK_SECRET: ", err)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// The raw bytes, verified before parsing; the cap is far above max_payload_bytes.
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4<<20))
		if err != nil || r.Method != http.MethodPost || !verified(key, r.Header, body) {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		var event struct{ ID, Type string }
		if json.Unmarshal(body, &event) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		log.Printf("verified %s %s", event.ID, event.Type) // deliveries repeat: dedupe on the ID
		w.WriteHeader(http.StatusNoContent)                // within 10 seconds, or MisarMail retries
	})
	port := os.Getenv("PORT")
	if port == "" {
		port = "8000"
	}
	log.Fatal(http.ListenAndServe(os.Getenv("HOST")+":"+port, nil))
}

// A stamp-relay webhook receiver in Go (docs/webhooks.md, "Writing a receiver").
//
//	go get github.com/standard-webhooks/standard-webhooks/libraries/go
//	WEBHOOK_SECRET=whsec_... PORT=8000 go run receiver.go
//
// It verifies each request with the official Standard Webhooks library,
// answers at once, then applies the events on one goroutine: duplicates
// (same CloudEvents id) are dropped, and a record's version is applied only
// when its stamp is above the one held. Replace apply with your own upserts.
package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

type event struct {
	ID          string          `json:"id"`
	Type        string          `json:"type"`
	Subject     string          `json:"subject"`
	UpdateStamp *uint64         `json:"updatestamp"`
	Data        json.RawMessage `json:"data"`
}

type held struct {
	stamp   uint64
	deleted bool
	data    json.RawMessage
}

func main() {
	wh, err := standardwebhooks.NewWebhook(os.Getenv("WEBHOOK_SECRET"))
	if err != nil {
		panic(err)
	}
	work := make(chan event, 10000)
	go func() {
		seen := map[string]bool{}
		records := map[string]held{} // "<resource>/<record id>"
		for e := range work {
			if seen[e.ID] || e.UpdateStamp == nil { // a duplicate, or a test ping
				continue
			}
			seen[e.ID] = true
			parts := strings.Split(e.Type, ".")
			key := parts[len(parts)-2] + "/" + e.Subject
			if h, ok := records[key]; ok && h.stamp >= *e.UpdateStamp {
				continue // older than what we hold
			}
			records[key] = held{*e.UpdateStamp, strings.HasSuffix(e.Type, ".deleted"), e.Data}
		}
	}()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		if err != nil || wh.Verify(body, r.Header) != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var events []event
		if strings.HasPrefix(strings.TrimSpace(string(body)), "[") {
			err = json.Unmarshal(body, &events) // a batch
		} else {
			var e event
			err = json.Unmarshal(body, &e)
			events = []event{e}
		}
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent) // answer first, work after
		for _, e := range events {
			work <- e
		}
	})
	port := os.Getenv("PORT")
	if port == "" {
		port = "8000"
	}
	panic(http.ListenAndServe("127.0.0.1:"+port, nil))
}

package client_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nimbus/gateway/client"
)

// A connect URL that cannot be reached fails with an error that names
// the URL without its token: the CLI prints these errors.
func TestDialErrorsRedactTheToken(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: the dial is refused
	const secret = "eyJhbGciOiJIUzI1NiJ9.SECRET.SIG"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := client.New("http://"+addr, "t1", "tenant-token")
	filesURL := "ws://" + addr + "/v1/connect/ses_1/files?token=" + secret

	_, dialErr := client.DialStdio(ctx, "ws://"+addr+"/v1/connect/ses_1/stdio?token="+secret)
	_, statErr := c.Stat(ctx, filesURL, "a.txt")
	_, downErr := c.Download(ctx, filesURL, "a.txt", &bytes.Buffer{}, 0, nil)
	for name, err := range map[string]error{"DialStdio": dialErr, "Stat": statErr, "Download": downErr} {
		if err == nil {
			t.Fatalf("%s: no error", name)
		}
		if strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "token=REDACTED") {
			t.Errorf("%s: %v", name, err)
		}
		var op *net.OpError
		if !errors.As(err, &op) {
			t.Errorf("%s: the cause is lost: %#v", name, err)
		}
	}
}

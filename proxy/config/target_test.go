package config

import (
	"fmt"
	"strings"
	"testing"
)

// TestTargetNeverShowsPassword writes passwords that URL syntax splits
// (#, /, ?, %, @, :) into upstream.url, valid and broken around them, and
// checks that neither an error nor Target.String contains any 3-character
// piece of the password.
func TestTargetNeverShowsPassword(t *testing.T) {
	passwords := []string{
		"p#ss/w?rd%zz", "a@b:c", "%41", "hun7qr2", "pa/ss", "12/34", "p?ss", "9876#x",
		"%zz", "s qz9k", "pw%2", "qnds%", "[v6]", "Ünïcøde",
	}
	templates := []string{
		"redis://user:%s@127.0.0.1:6379",
		"redis://:%s@127.0.0.1:6379/0",
		"redis://user:%s@127.0.0.1:bad",
		"redis://user:%s@127.0.0.1:6379/x",
		"rediss://user:%s@127.0.0.1:6379?x=1",
		"rediss://user:%s@127.0.0.1:6379?db=2#frag",
		"redis://user:%s@",
		"ftp://user:%s@127.0.0.1",
		"unix://user:%s@/tmp/r.sock?db=a",
		"unix://user:%s@tmp/r.sock",
		"redis:user:%s@127.0.0.1:6379",
		"user:%s@127.0.0.1:6379",
		"//user:%s@127.0.0.1:6379",
		"redis://%s@127.0.0.1:6379",
	}
	for _, pw := range passwords {
		for _, tmpl := range templates {
			raw := fmt.Sprintf(tmpl, pw)
			tg, err := Upstream{URL: raw}.Target()
			shown := tg.String()
			if err != nil {
				shown = err.Error()
				if !strings.HasPrefix(shown, "upstream.url: ") {
					t.Errorf("%q: error %q does not name upstream.url", raw, shown)
				}
			}
			if piece := passwordPiece(pw, shown); piece != "" {
				t.Errorf("%q: %q shows %q, part of the password", raw, shown, piece)
			}
		}
	}
}

// passwordPiece returns a 3-character piece of pw found in s (all of pw
// when it is shorter), or "".
func passwordPiece(pw, s string) string {
	if len(pw) < 3 {
		if strings.Contains(s, pw) {
			return pw
		}
		return ""
	}
	for i := 0; i+3 <= len(pw); i++ {
		if strings.Contains(s, pw[i:i+3]) {
			return pw[i : i+3]
		}
	}
	return ""
}

// TestTargetUserinfo: user names and passwords are read as net/url reads
// them in every URL it parses correctly, and a URL whose password has
// characters that end the user-info part gets an error explaining the
// percent-encoding instead of a wrong host or port.
func TestTargetUserinfo(t *testing.T) {
	tests := []struct {
		url            string
		user, password string
		address        string
		db             int
		wantErr        string
	}{
		{"redis://u:p%2Fw%3F%23%25@127.0.0.1:6379", "u", "p/w?#%", "127.0.0.1:6379", 0, ""},
		{"redis://user:a@b:c@127.0.0.1", "user", "a@b:c", "127.0.0.1:6379", 0, ""},
		{"redis://a@b:c@127.0.0.1", "a@b", "c", "127.0.0.1:6379", 0, ""},
		{"redis://u:%41@127.0.0.1:6379/3", "u", "A", "127.0.0.1:6379", 3, ""},
		{"redis://u:p+q@127.0.0.1", "u", "p+q", "127.0.0.1:6379", 0, ""},
		{"redis://%75ser@127.0.0.1", "user", "", "127.0.0.1:6379", 0, ""},
		{"redis://u:@127.0.0.1", "u", "", "127.0.0.1:6379", 0, ""},
		{"redis://@127.0.0.1", "", "", "127.0.0.1:6379", 0, ""},
		{"rediss://u:pw@[::1]:6390/1", "u", "pw", "[::1]:6390", 1, ""},
		{"unix://app:p@ss@/tmp/r.sock?db=2", "app", "p@ss", "/tmp/r.sock", 2, ""},
		{"unix:///tmp/a@b.sock", "", "", "/tmp/a@b.sock", 0, ""},
		{"unix:///tmp/a@b.sock?db=1", "", "", "/tmp/a@b.sock", 1, ""},
		{"redis://u:p#ss@127.0.0.1", "", "", "", 0, "percent-encode"},
		{"redis://u:1234/5@127.0.0.1", "", "", "", 0, "percent-encode"},
		{"redis://u:12?x@127.0.0.1", "", "", "", 0, "percent-encode"},
		{"redis://u:p%zz@127.0.0.1", "", "", "", 0, "percent-encode"},
		{"redis://u:p ss@127.0.0.1", "", "", "", 0, "percent-encode"},
		{"redis:u:pw@127.0.0.1", "", "", "", 0, "redis://"},
		{"u:pw@127.0.0.1:6379", "", "", "", 0, "redis://"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			got, err := Upstream{URL: tt.url}.Target()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Username != tt.user || got.Password != tt.password || got.Address != tt.address || got.DB != tt.db {
				t.Errorf("got user %q password %q address %q db %d, want %q %q %q %d",
					got.Username, got.Password, got.Address, got.DB, tt.user, tt.password, tt.address, tt.db)
			}
		})
	}
}

func TestIsLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.1.2.3": true, "::1": true, "[::1]": true, "localhost": true, "LocalHost": true, "redis.localhost": true,
		"10.0.0.1": false, "0.0.0.0": false, "": false, "redis.internal": false, "localhost.example": false,
	} {
		if got := IsLoopbackHost(host); got != want {
			t.Errorf("IsLoopbackHost(%q) = %v", host, got)
		}
	}
}

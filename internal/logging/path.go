package logging

import (
	"encoding/base64"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Path logs a file name that may not be UTF-8 (Linux names are bytes).
// The key holds the name with each invalid byte as U+FFFD; only when there
// is such a byte, KEY_base64 holds the exact bytes, as `scan --json` does.
func Path(key string, p []byte) zap.Field {
	return zap.Inline(pathField{key, p})
}

type pathField struct {
	key string
	p   []byte
}

func (f pathField) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	text, b64 := Name(f.p)
	enc.AddString(f.key, text)
	if b64 != "" {
		enc.AddString(f.key+"_base64", b64)
	}
	return nil
}

// Name is the one encoding of a file name that may not be UTF-8, for log
// events, `scan --json`, `rescue --json`, `list --json`, `restore --json`
// and sidecars alike: text is the name with each invalid byte as U+FFFD,
// and b64, only when there is such a byte, holds the exact bytes in
// standard base64 (otherwise "").
func Name(p []byte) (text, b64 string) {
	if utf8.Valid(p) {
		return string(p), ""
	}
	return string([]rune(string(p))), base64.StdEncoding.EncodeToString(p)
}

// NameBytes is the inverse of Name: the exact bytes, from b64 when set.
func NameBytes(text, b64 string) ([]byte, error) {
	if b64 == "" {
		return []byte(text), nil
	}
	return base64.StdEncoding.DecodeString(b64)
}

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
	enc.AddByteString(f.key, f.p)
	if !utf8.Valid(f.p) {
		enc.AddString(f.key+"_base64", base64.StdEncoding.EncodeToString(f.p))
	}
	return nil
}

module github.com/relinkd/relinkd

go 1.26.8

require golang.org/x/sys v0.49.0

require (
	go.uber.org/multierr v1.10.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
)

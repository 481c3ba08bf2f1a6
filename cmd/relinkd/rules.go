package main

import (
	"go.uber.org/zap"

	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// ruleMatcher returns which watch rule of the configuration (resolved as
// the daemon does) matches a candidate, and whether to list it: files no
// rule matches are listed only with all.
func ruleMatcher(configPath string, all bool) (func(*scanner.Candidate) (string, bool), error) {
	cfg, _, err := policy.Resolve(configPath)
	if err != nil {
		return nil, err
	}
	p := policy.New(cfg, zap.NewNop())
	return func(c *scanner.Candidate) (string, bool) {
		if r, ok := p.Match(c); ok {
			return r.Name, true
		}
		return "", all
	}, nil
}

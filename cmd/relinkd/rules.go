package main

import (
	"github.com/relinkd/relinkd/pkg/policy"
	"github.com/relinkd/relinkd/pkg/scanner"
)

// ruleMatcher returns which watch rule of the policy matches a candidate,
// and whether to list it: files no rule matches are listed only with all.
func ruleMatcher(p *policy.Policy, all bool) func(*scanner.Candidate) (string, bool) {
	return func(c *scanner.Candidate) (string, bool) {
		if r, ok := p.Match(c); ok {
			return r.Name, true
		}
		return "", all
	}
}

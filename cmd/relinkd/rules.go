package main

import "github.com/relinkd/relinkd/pkg/scanner"

// ruleMatcher returns which watch rule matches a candidate. With all set,
// every candidate is listed with its rule name, if any.
// TODO(lead): wire pkg/policy once it lands; until then no rule matches.
func ruleMatcher(configPath string, all bool) (func(*scanner.Candidate) (string, bool), error) {
	return func(*scanner.Candidate) (string, bool) { return "", all }, nil
}

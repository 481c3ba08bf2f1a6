//go:build race

package e2e

// raceEnabled: the tests run with -race, so the daemon is built with it
// too and any data race it hits fails the test that drove it.
const raceEnabled = true

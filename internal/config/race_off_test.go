//go:build !race

package config

// raceEnabled tells whether the tests run under the race detector.
const raceEnabled = false

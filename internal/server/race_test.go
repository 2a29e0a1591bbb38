//go:build race

package server

// raceEnabled: the race detector instruments every function, which makes
// frames, and so stacks, larger.
const raceEnabled = true

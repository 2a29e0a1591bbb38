//go:build race

package manager_test

// raceSchedules is how many fault-injection schedules run under the race
// detector, which makes each about ten times slower; scripts/test also
// runs all of them without it.
const raceSchedules = 1000

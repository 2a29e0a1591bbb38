//go:build !race

package manager_test

const raceSchedules = 0 // no limit

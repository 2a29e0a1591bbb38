package main

import (
	"math"
	"slices"
	"time"
)

// median of xs; for an even count, the mean of the two middle values. NaN
// for no values.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile is the nearest-rank percentile p (0 < p <= 100) of xs: the
// smallest value that at least p% of the values do not exceed. With fewer
// than 100 values, the 99th percentile is the maximum. NaN for no values.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = max(1, min(rank, len(s)))
	return s[rank-1]
}

// ms converts a duration to milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// nsToMs converts nanoseconds to milliseconds.
func nsToMs(ns int64) float64 { return float64(ns) / 1e6 }

// interleave runs warmup+n rounds. In each round every runner runs once;
// the order rotates from round to round (ABC, BCA, CAB, ...) so that a
// drift or a burst of noise on the shared machine hits vpnd and its
// baselines alike. A runner records its samples only when record is true,
// so the warm-up rounds are measured but left out.
func interleave(n, warmup int, runners ...func(record bool) error) error {
	for round := 0; round < warmup+n; round++ {
		for j := range runners {
			if err := runners[(round+j)%len(runners)](round >= warmup); err != nil {
				return err
			}
		}
	}
	return nil
}

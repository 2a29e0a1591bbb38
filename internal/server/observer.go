package server

import "time"

// Observer is told about each request the server handled, for metrics.
// It must not block.
type Observer interface {
	// Request: a request for method ("" if it had none) was handled with
	// code (0 for success, else the error's code) in took.
	Request(method string, code int, took time.Duration)
}

// noObserver observes nothing: Config.Observer left nil.
type noObserver struct{}

func (noObserver) Request(string, int, time.Duration) {}

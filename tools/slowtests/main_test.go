package main

import (
	"strings"
	"testing"
)

func TestSlowest(t *testing.T) {
	in := `{"Action":"start","Package":"github.com/vpnd/vpnd/test"}
{"Action":"run","Package":"github.com/vpnd/vpnd/test","Test":"TestA"}
{"Action":"pass","Package":"github.com/vpnd/vpnd/test","Test":"TestA/sub","Elapsed":5}
{"Action":"pass","Package":"github.com/vpnd/vpnd/test","Test":"TestA","Elapsed":6.5}
{"Action":"fail","Package":"github.com/vpnd/vpnd/internal/x","Test":"TestB","Elapsed":9}
{"Action":"skip","Package":"github.com/vpnd/vpnd/test","Test":"TestC","Elapsed":0}
not json
{"Action":"pass","Package":"github.com/vpnd/vpnd/test","Elapsed":20}
`
	results, err := read(strings.NewReader(in), false)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	write(&b, results, 2)
	want := "  1    9.00s  internal/x TestB (fail)\n  2    6.50s  test TestA\n      15.50s  in all, 3 tests\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	if results, _ := read(strings.NewReader(in), true); len(results) != 4 {
		t.Errorf("with subtests: %d results, want 4", len(results))
	}
}

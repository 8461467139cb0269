// Command genreadme writes commands.BehaviourTable into README.md, between
// the "BEGIN commands table" and "END commands table" markers.
//
//	go run ./internal/genreadme -readme ../../README.md   (what go generate runs)
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"

	"github.com/tlsproxy/tlsproxy/proxy/commands"
	"github.com/tlsproxy/tlsproxy/proxy/commands/internal/gen"
)

func main() {
	readme := flag.String("readme", "README.md", "the README to update")
	flag.Parse()
	if err := run(*readme); err != nil {
		fmt.Fprintln(os.Stderr, "genreadme:", err)
		os.Exit(1)
	}
}

func run(path string) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := gen.ReplaceSection(doc, []byte(commands.BehaviourTable()))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if bytes.Equal(out, doc) {
		return nil
	}
	return os.WriteFile(path, out, 0o644)
}

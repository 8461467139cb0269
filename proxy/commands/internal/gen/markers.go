package gen

import (
	"bytes"
	"fmt"
)

// The README's generated command table sits between these lines.
const (
	BeginMarker = "<!-- BEGIN commands table -->"
	EndMarker   = "<!-- END commands table -->"
)

// Section returns the text between the markers' lines in doc, without them.
func Section(doc []byte) ([]byte, error) {
	begin, end, err := bounds(doc)
	if err != nil {
		return nil, err
	}
	return doc[begin:end], nil
}

// ReplaceSection returns doc with the text between the markers' lines
// replaced by section, which should end in a newline.
func ReplaceSection(doc, section []byte) ([]byte, error) {
	begin, end, err := bounds(doc)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(doc)-(end-begin)+len(section))
	out = append(out, doc[:begin]...)
	out = append(out, section...)
	return append(out, doc[end:]...), nil
}

// bounds finds the section: from the line after BeginMarker to the start of
// the line holding EndMarker.
func bounds(doc []byte) (begin, end int, err error) {
	b := bytes.Index(doc, []byte(BeginMarker+"\n"))
	e := bytes.Index(doc, []byte(EndMarker))
	if b < 0 || e < 0 || e < b || bytes.Count(doc, []byte(BeginMarker)) != 1 || bytes.Count(doc, []byte(EndMarker)) != 1 {
		return 0, 0, fmt.Errorf("want exactly one %q line followed by one %q", BeginMarker, EndMarker)
	}
	begin = b + len(BeginMarker) + 1
	if e > 0 && doc[e-1] != '\n' {
		return 0, 0, fmt.Errorf("%q must start a line", EndMarker)
	}
	return begin, e, nil
}

package batch

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/flatnet/flatnet/probes/connect"
)

// ParseTargets reads a batch request: one target per line, either
//
//	host:port [tcp|udp|sctp]
//	host:0 icmp
//
// or a JSON Target object ({"target":"10.0.0.7:80","protocol":"udp"}). Blank lines
// and lines starting with # are skipped. Every line is checked before any is
// probed: the first bad one fails the whole request, naming its line and field.
func ParseTargets(r io.Reader) ([]Target, error) {
	var targets []Target
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		t, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("target line %d %q: %w", n, line, err)
		}
		targets = append(targets, t)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading targets: %w", err)
	}
	return targets, nil
}

func parseLine(line string) (Target, error) {
	var t Target
	if strings.HasPrefix(line, "{") {
		dec := json.NewDecoder(bytes.NewReader([]byte(line)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&t); err != nil {
			return Target{}, fmt.Errorf("%w (JSON lines take the fields target, protocol, payload)", err)
		}
	} else {
		f := strings.Fields(line)
		if len(f) > 2 {
			return Target{}, errors.New("too many fields: write host:port, optionally followed by tcp, udp or sctp (or host:0 icmp)")
		}
		t.Target = f[0]
		if len(f) == 2 {
			t.Protocol = connect.Protocol(f[1])
		}
	}
	return t, ValidateTarget(t)
}

// ValidateTarget checks t's shape: host:port with a numeric port from 1 to 65535
// and a known protocol. Names are allowed as hosts (they resolve when probed).
func ValidateTarget(t Target) error {
	host, port, err := net.SplitHostPort(t.Target)
	if err != nil {
		return fmt.Errorf("target: %v: write host:port, e.g. 10.224.0.57:80 or [fd00::7]:80", err)
	}
	if host == "" {
		return errors.New("target: empty host: write host:port, e.g. 10.224.0.57:80")
	}
	if t.Protocol != "" {
		if _, err := connect.ParseProtocol(string(t.Protocol)); err != nil {
			return fmt.Errorf("protocol %q: must be tcp, udp, sctp or icmp", t.Protocol)
		}
	}
	n, err := strconv.Atoi(port)
	switch {
	case t.Protocol == connect.ICMP && port != "0":
		return fmt.Errorf("target: port %q: ICMP has no ports: write host:0 icmp", port)
	case t.Protocol == connect.ICMP:
	case err != nil || n < 1 || n > 65535:
		return fmt.Errorf("target: port %q: must be a number from 1 to 65535", port)
	}
	return nil
}

// EncodeTargets writes targets as JSON lines, the form ParseTargets reads back
// unchanged whatever the hosts look like.
func EncodeTargets(w io.Writer, targets []Target) error {
	enc := json.NewEncoder(w)
	for _, t := range targets {
		if err := enc.Encode(t); err != nil {
			return fmt.Errorf("encoding target %s: %w", t.Target, err)
		}
	}
	return nil
}

// DecodeResults reads the JSON lines `probe batch` prints.
func DecodeResults(r io.Reader) ([]Result, error) {
	var out []Result
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	for {
		var res Result
		err := dec.Decode(&res)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("decoding result %d: %w", len(out)+1, err)
		}
		out = append(out, res)
	}
}

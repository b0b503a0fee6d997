package perf

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// magic starts every TCP connection and every UDP request, so the server can tell
// a perf client from a stray connection and refuse it.
var magic = [4]byte{'F', 'N', 'P', 'F'}

const (
	tcpHeaderLen = 16 // magic, test, 3 reserved, request size, response size
	udpHeaderLen = 12 // magic, sequence, response size
	udpAnswerLen = 4  // sequence
)

// testCodes are the test identifiers in a TCP header.
var testCodes = map[Test]byte{TCPRR: 1, TCPCRR: 2, TCPStream: 3}

// tcpHeader is what a client says first on a TCP connection.
type tcpHeader struct {
	test                      Test
	requestSize, responseSize int
}

func (h tcpHeader) append(b []byte) []byte {
	b = append(b, magic[:]...)
	b = append(b, testCodes[h.test], 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(h.requestSize))
	return binary.BigEndian.AppendUint32(b, uint32(h.responseSize))
}

func parseTCPHeader(b []byte) (tcpHeader, error) {
	if len(b) != tcpHeaderLen || [4]byte(b[:4]) != magic {
		return tcpHeader{}, errors.New("not a probe perf client (bad magic)")
	}
	h := tcpHeader{
		requestSize:  int(binary.BigEndian.Uint32(b[8:])),
		responseSize: int(binary.BigEndian.Uint32(b[12:])),
	}
	for t, c := range testCodes {
		if c == b[4] {
			h.test = t
		}
	}
	switch {
	case h.test == "":
		return h, fmt.Errorf("unknown test code %d", b[4])
	case h.requestSize < 1 || h.requestSize > maxTCPSize:
		return h, fmt.Errorf("request size %d out of range", h.requestSize)
	case h.test != TCPStream && (h.responseSize < 1 || h.responseSize > maxTCPSize):
		return h, fmt.Errorf("response size %d out of range", h.responseSize)
	}
	return h, nil
}

// udpRequest fills b (at least udpHeaderLen long) with a request header.
func udpRequest(b []byte, seq uint32, responseSize int) {
	copy(b, magic[:])
	binary.BigEndian.PutUint32(b[4:], seq)
	binary.BigEndian.PutUint32(b[8:], uint32(responseSize))
}

func parseUDPRequest(b []byte) (seq uint32, responseSize int, err error) {
	if len(b) < udpHeaderLen || [4]byte(b[:4]) != magic {
		return 0, 0, errors.New("not a probe perf request (bad magic)")
	}
	seq, responseSize = binary.BigEndian.Uint32(b[4:]), int(binary.BigEndian.Uint32(b[8:]))
	if responseSize < 1 || responseSize > maxUDPSize {
		return 0, 0, fmt.Errorf("response size %d out of range", responseSize)
	}
	return seq, responseSize, nil
}

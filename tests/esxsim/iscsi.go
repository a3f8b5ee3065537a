package main

// A small iSCSI initiator (RFC 7143): login (with CHAP), SendTargets discovery,
// and the few SCSI commands esxsim needs (REPORT LUNS, INQUIRY, READ CAPACITY(16),
// READ(10), WRITE(10)). One connection per session, ErrorRecoveryLevel 0, no digests.

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

const (
	opNopOut     = 0x00
	opSCSICmd    = 0x01
	opLoginReq   = 0x03
	opTextReq    = 0x04
	opDataOut    = 0x05
	opLogoutReq  = 0x06
	opNopIn      = 0x20
	opSCSIResp   = 0x21
	opLoginResp  = 0x23
	opTextResp   = 0x24
	opDataIn     = 0x25
	opLogoutResp = 0x26
	opR2T        = 0x31
	opAsync      = 0x32
	opReject     = 0x3f
)

// iscsiTimeout bounds every network step (dial, each PDU read/write).
var iscsiTimeout = 2 * time.Second

// ChapConfig holds one-way CHAP credentials (the initiator proves itself).
type ChapConfig struct {
	Name   string
	Secret string
}

// IscsiSession is one logged-in session to a target portal.
type IscsiSession struct {
	conn          net.Conn
	itt           uint32
	cmdSN         uint32
	expStatSN     uint32
	tsih          uint16
	isid          [6]byte
	targetMaxRecv int
	Target        string
	Portal        string
}

type pdu struct {
	bhs  [48]byte
	data []byte
}

func (p *pdu) opcode() byte { return p.bhs[0] & 0x3f }

// IsLabAddress reports whether addr (host or host:port) is one esxsim may listen on or connect
// to: loopback (127.0.0.0/8), or 198.18.0.0/15, the range RFC 2544 sets aside for network tests
// (the two-box lab's network namespaces use it; no router forwards it).
func IsLabAddress(addr string) bool {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	ip4 := ip.To4()
	return ip4 != nil && (ip4[0] == 127 || (ip4[0] == 198 && ip4[1]&0xfe == 18))
}

func portalAddr(address string, port int32) string {
	if port == 0 {
		port = 3260
	}
	return net.JoinHostPort(address, strconv.Itoa(int(port)))
}

func (s *IscsiSession) send(p *pdu) error {
	n := len(p.data)
	p.bhs[5] = byte(n >> 16)
	p.bhs[6] = byte(n >> 8)
	p.bhs[7] = byte(n)
	buf := make([]byte, 0, 48+n+3)
	buf = append(buf, p.bhs[:]...)
	buf = append(buf, p.data...)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(iscsiTimeout))
	_, err := s.conn.Write(buf)
	return err
}

func (s *IscsiSession) recv() (*pdu, error) {
	for {
		_ = s.conn.SetReadDeadline(time.Now().Add(iscsiTimeout))
		p := &pdu{}
		if _, err := io.ReadFull(s.conn, p.bhs[:]); err != nil {
			return nil, err
		}
		ahs := int(p.bhs[4]) * 4
		dlen := int(p.bhs[5])<<16 | int(p.bhs[6])<<8 | int(p.bhs[7])
		padded := (dlen + 3) &^ 3
		rest := make([]byte, ahs+padded)
		if _, err := io.ReadFull(s.conn, rest); err != nil {
			return nil, err
		}
		p.data = rest[ahs : ahs+dlen]
		op := p.opcode()
		// Track StatSN on responses that carry it.
		switch op {
		case opLoginResp, opTextResp, opSCSIResp, opLogoutResp, opNopIn, opReject, opAsync, opR2T:
			s.expStatSN = binary.BigEndian.Uint32(p.bhs[24:28]) + 1
		case opDataIn:
			if p.bhs[1]&0x01 != 0 {
				s.expStatSN = binary.BigEndian.Uint32(p.bhs[24:28]) + 1
			}
		}
		if op == opNopIn {
			ttt := binary.BigEndian.Uint32(p.bhs[20:24])
			if ttt != 0xffffffff { // target ping: answer it
				r := &pdu{}
				r.bhs[0] = opNopOut | 0x40
				r.bhs[1] = 0x80
				copy(r.bhs[8:16], p.bhs[8:16])
				binary.BigEndian.PutUint32(r.bhs[16:20], 0xffffffff)
				binary.BigEndian.PutUint32(r.bhs[20:24], ttt)
				binary.BigEndian.PutUint32(r.bhs[24:28], s.cmdSN)
				binary.BigEndian.PutUint32(r.bhs[28:32], s.expStatSN)
				if err := s.send(r); err != nil {
					return nil, err
				}
			}
			continue
		}
		if op == opAsync {
			continue
		}
		return p, nil
	}
}

func encodeKV(kv [][2]string) []byte {
	var b bytes.Buffer
	for _, e := range kv {
		b.WriteString(e[0])
		b.WriteByte('=')
		b.WriteString(e[1])
		b.WriteByte(0)
	}
	return b.Bytes()
}

func decodeKV(data []byte) map[string]string {
	m := map[string]string{}
	for _, part := range bytes.Split(data, []byte{0}) {
		if len(part) == 0 {
			continue
		}
		kv := strings.SplitN(string(part), "=", 2)
		if len(kv) == 2 {
			m[kv[0]] = kv[1]
		}
	}
	return m
}

// decodeKVList keeps order and duplicates (SendTargets responses repeat keys).
func decodeKVList(data []byte) [][2]string {
	var out [][2]string
	for _, part := range bytes.Split(data, []byte{0}) {
		if len(part) == 0 {
			continue
		}
		kv := strings.SplitN(string(part), "=", 2)
		if len(kv) == 2 {
			out = append(out, [2]string{kv[0], kv[1]})
		}
	}
	return out
}

// LoginError is a login the target refused (status class/detail from the login response).
type LoginError struct {
	Class, Detail byte
	Portal        string
	Target        string
}

func (e *LoginError) Error() string {
	reason := "login rejected"
	switch {
	case e.Class == 2 && e.Detail == 1:
		reason = "authentication failure"
	case e.Class == 2 && e.Detail == 2:
		reason = "authorization failure (initiator not allowed)"
	case e.Class == 2 && e.Detail == 3:
		reason = "target not found"
	}
	return fmt.Sprintf("iSCSI login to %s at %s: %s (status 0x%02x%02x)", e.Target, e.Portal, reason, e.Class, e.Detail)
}

// Login opens a session. target == "" makes a discovery session.
func Login(portal, initiator, target string, chap *ChapConfig) (*IscsiSession, error) {
	if !IsLabAddress(portal) {
		return nil, fmt.Errorf("portal %s is outside 127.0.0.0/8 and 198.18.0.0/15: esxsim never connects there", portal)
	}
	conn, err := net.DialTimeout("tcp", portal, iscsiTimeout)
	if err != nil {
		return nil, err
	}
	s := &IscsiSession{conn: conn, cmdSN: 1, targetMaxRecv: 8192, Target: target, Portal: portal}
	h := md5.Sum([]byte(initiator))
	s.isid = [6]byte{0x80, h[0], h[1], h[2], h[3], h[4]}
	if err := s.login(initiator, target, chap); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

func (s *IscsiSession) loginPDU(csg, nsg byte, transit bool, kv [][2]string) *pdu {
	p := &pdu{}
	p.bhs[0] = opLoginReq | 0x40
	flags := csg<<2 | nsg
	if transit {
		flags |= 0x80
	}
	p.bhs[1] = flags
	copy(p.bhs[8:14], s.isid[:])
	binary.BigEndian.PutUint16(p.bhs[14:16], s.tsih)
	binary.BigEndian.PutUint32(p.bhs[16:20], s.itt)
	binary.BigEndian.PutUint32(p.bhs[24:28], s.cmdSN)
	binary.BigEndian.PutUint32(p.bhs[28:32], s.expStatSN)
	p.data = encodeKV(kv)
	return p
}

func (s *IscsiSession) loginExchange(csg, nsg byte, transit bool, kv [][2]string) (*pdu, map[string]string, error) {
	if err := s.send(s.loginPDU(csg, nsg, transit, kv)); err != nil {
		return nil, nil, err
	}
	r, err := s.recv()
	if err != nil {
		return nil, nil, err
	}
	if r.opcode() != opLoginResp {
		return nil, nil, fmt.Errorf("iSCSI login: unexpected opcode 0x%02x", r.opcode())
	}
	if r.bhs[36] != 0 {
		return nil, nil, &LoginError{Class: r.bhs[36], Detail: r.bhs[37], Portal: s.Portal, Target: s.Target}
	}
	s.tsih = binary.BigEndian.Uint16(r.bhs[14:16])
	return r, decodeKV(r.data), nil
}

func (s *IscsiSession) login(initiator, target string, chap *ChapConfig) error {
	sessionType := "Normal"
	if target == "" {
		sessionType = "Discovery"
	}
	kv := [][2]string{{"InitiatorName", initiator}, {"SessionType", sessionType}}
	if target != "" {
		kv = append(kv, [2]string{"TargetName", target})
	}
	auth := "None"
	if chap != nil && chap.Name != "" {
		auth = "CHAP,None"
	}
	kv = append(kv, [2]string{"AuthMethod", auth})

	r, m, err := s.loginExchange(0, 1, true, kv)
	if err != nil {
		return err
	}
	if m["AuthMethod"] == "CHAP" {
		if chap == nil {
			return &LoginError{Class: 2, Detail: 1, Portal: s.Portal, Target: target}
		}
		r, m, err = s.loginExchange(0, 1, false, [][2]string{{"CHAP_A", "5"}})
		if err != nil {
			return err
		}
		id, err := strconv.Atoi(m["CHAP_I"])
		if err != nil {
			return fmt.Errorf("iSCSI CHAP: bad CHAP_I %q", m["CHAP_I"])
		}
		chal, err := hex.DecodeString(strings.TrimPrefix(strings.TrimPrefix(m["CHAP_C"], "0x"), "0X"))
		if err != nil {
			return fmt.Errorf("iSCSI CHAP: bad CHAP_C")
		}
		h := md5.New()
		h.Write([]byte{byte(id)})
		h.Write([]byte(chap.Secret))
		h.Write(chal)
		resp := "0x" + hex.EncodeToString(h.Sum(nil))
		r, m, err = s.loginExchange(0, 1, true, [][2]string{{"CHAP_N", chap.Name}, {"CHAP_R", resp}})
		if err != nil {
			return err
		}
	}
	// Keep going until the target lets us transit out of the security stage.
	for tries := 0; r.bhs[1]&0x80 == 0; tries++ {
		if tries > 4 {
			return errors.New("iSCSI login: target did not leave the security stage")
		}
		r, m, err = s.loginExchange(0, 1, true, nil)
		if err != nil {
			return err
		}
	}
	_ = m
	op := [][2]string{
		{"HeaderDigest", "None"},
		{"DataDigest", "None"},
		{"MaxRecvDataSegmentLength", "262144"},
		{"DefaultTime2Wait", "0"},
		{"DefaultTime2Retain", "0"},
		{"ErrorRecoveryLevel", "0"},
	}
	if target != "" {
		op = append(op,
			[2]string{"InitialR2T", "Yes"},
			[2]string{"ImmediateData", "No"},
			[2]string{"MaxBurstLength", "262144"},
			[2]string{"FirstBurstLength", "65536"},
			[2]string{"MaxConnections", "1"},
			[2]string{"MaxOutstandingR2T", "1"},
			[2]string{"DataPDUInOrder", "Yes"},
			[2]string{"DataSequenceInOrder", "Yes"},
		)
	}
	if (r.bhs[1] & 3) != 3 {
		for tries := 0; ; tries++ {
			if tries > 4 {
				return errors.New("iSCSI login: operational negotiation did not finish")
			}
			var mm map[string]string
			r, mm, err = s.loginExchange(1, 3, true, op)
			if err != nil {
				return err
			}
			if v, ok := mm["MaxRecvDataSegmentLength"]; ok {
				if n, e := strconv.Atoi(v); e == nil && n > 0 {
					s.targetMaxRecv = n
				}
			}
			if r.bhs[1]&0x80 != 0 && r.bhs[1]&3 == 3 {
				break
			}
			op = nil
		}
	}
	return nil
}

// SendTargetsEntry is one target offered by SendTargets discovery.
type SendTargetsEntry struct {
	Name      string
	Addresses []string // "ip:port,tpgt"
}

// SendTargets runs the SendTargets=All text exchange on a discovery session.
func (s *IscsiSession) SendTargets() ([]SendTargetsEntry, error) {
	var all []byte
	ttt := uint32(0xffffffff)
	payload := encodeKV([][2]string{{"SendTargets", "All"}})
	for i := 0; i < 16; i++ {
		p := &pdu{}
		p.bhs[0] = opTextReq | 0x40
		p.bhs[1] = 0x80
		s.itt++
		binary.BigEndian.PutUint32(p.bhs[16:20], s.itt)
		binary.BigEndian.PutUint32(p.bhs[20:24], ttt)
		binary.BigEndian.PutUint32(p.bhs[24:28], s.cmdSN)
		binary.BigEndian.PutUint32(p.bhs[28:32], s.expStatSN)
		p.data = payload
		if err := s.send(p); err != nil {
			return nil, err
		}
		r, err := s.recv()
		if err != nil {
			return nil, err
		}
		if r.opcode() != opTextResp {
			return nil, fmt.Errorf("SendTargets: unexpected opcode 0x%02x", r.opcode())
		}
		all = append(all, r.data...)
		if r.bhs[1]&0x40 == 0 { // C bit clear: complete
			break
		}
		ttt = binary.BigEndian.Uint32(r.bhs[20:24])
		payload = nil
	}
	var out []SendTargetsEntry
	for _, kv := range decodeKVList(all) {
		switch kv[0] {
		case "TargetName":
			out = append(out, SendTargetsEntry{Name: kv[1]})
		case "TargetAddress":
			if len(out) > 0 {
				out[len(out)-1].Addresses = append(out[len(out)-1].Addresses, kv[1])
			}
		}
	}
	return out, nil
}

// Logout closes the session politely, then the connection.
func (s *IscsiSession) Close() {
	if s == nil || s.conn == nil {
		return
	}
	p := &pdu{}
	p.bhs[0] = opLogoutReq | 0x40
	p.bhs[1] = 0x80
	s.itt++
	binary.BigEndian.PutUint32(p.bhs[16:20], s.itt)
	binary.BigEndian.PutUint32(p.bhs[24:28], s.cmdSN)
	binary.BigEndian.PutUint32(p.bhs[28:32], s.expStatSN)
	if s.send(p) == nil {
		_, _ = s.recv()
	}
	s.conn.Close()
	s.conn = nil
}

// SCSIError is a SCSI command that ended with a non-GOOD status.
type SCSIError struct {
	Status   byte
	SenseKey byte
	ASC      byte
	ASCQ     byte
}

func (e *SCSIError) Error() string {
	return fmt.Sprintf("SCSI status 0x%02x sense key 0x%x asc 0x%02x ascq 0x%02x", e.Status, e.SenseKey, e.ASC, e.ASCQ)
}

func encodeLUN(lun uint16) [8]byte {
	var b [8]byte
	if lun < 256 {
		b[1] = byte(lun)
	} else {
		b[0] = 0x40 | byte(lun>>8)&0x3f
		b[1] = byte(lun)
	}
	return b
}

// Command runs one SCSI command. For reads, readLen is the expected transfer length;
// for writes, out holds the data.
func (s *IscsiSession) Command(lun uint16, cdb []byte, readLen int, out []byte) ([]byte, error) {
	var err error
	var data []byte
	for attempt := 0; attempt < 4; attempt++ {
		data, err = s.command(lun, cdb, readLen, out)
		var se *SCSIError
		if errors.As(err, &se) && se.SenseKey == 0x6 { // UNIT ATTENTION: retry
			continue
		}
		return data, err
	}
	return data, err
}

func (s *IscsiSession) command(lun uint16, cdb []byte, readLen int, out []byte) ([]byte, error) {
	p := &pdu{}
	p.bhs[0] = opSCSICmd
	flags := byte(0x80 | 0x01) // F, simple task attribute
	expLen := readLen
	if out != nil {
		flags |= 0x20
		expLen = len(out)
	} else if readLen > 0 {
		flags |= 0x40
	}
	p.bhs[1] = flags
	l := encodeLUN(lun)
	copy(p.bhs[8:16], l[:])
	s.itt++
	itt := s.itt
	binary.BigEndian.PutUint32(p.bhs[16:20], itt)
	binary.BigEndian.PutUint32(p.bhs[20:24], uint32(expLen))
	binary.BigEndian.PutUint32(p.bhs[24:28], s.cmdSN)
	binary.BigEndian.PutUint32(p.bhs[28:32], s.expStatSN)
	copy(p.bhs[32:48], cdb)
	s.cmdSN++
	if err := s.send(p); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, readLen)
	for {
		r, err := s.recv()
		if err != nil {
			return nil, err
		}
		switch r.opcode() {
		case opDataIn:
			off := int(binary.BigEndian.Uint32(r.bhs[40:44]))
			if need := off + len(r.data); need > len(buf) {
				if need > cap(buf) {
					nb := make([]byte, need)
					copy(nb, buf)
					buf = nb
				} else {
					buf = buf[:need]
				}
			}
			copy(buf[off:], r.data)
			if r.bhs[1]&0x01 != 0 {
				if st := r.bhs[3]; st != 0 {
					return buf, &SCSIError{Status: st}
				}
				return buf, nil
			}
		case opR2T:
			ttt := binary.BigEndian.Uint32(r.bhs[20:24])
			off := int(binary.BigEndian.Uint32(r.bhs[40:44]))
			want := int(binary.BigEndian.Uint32(r.bhs[44:48]))
			dataSN := uint32(0)
			for sent := 0; sent < want; {
				n := want - sent
				if n > s.targetMaxRecv {
					n = s.targetMaxRecv
				}
				d := &pdu{}
				d.bhs[0] = opDataOut
				if sent+n >= want {
					d.bhs[1] = 0x80
				}
				copy(d.bhs[8:16], l[:])
				binary.BigEndian.PutUint32(d.bhs[16:20], itt)
				binary.BigEndian.PutUint32(d.bhs[20:24], ttt)
				binary.BigEndian.PutUint32(d.bhs[28:32], s.expStatSN)
				binary.BigEndian.PutUint32(d.bhs[36:40], dataSN)
				binary.BigEndian.PutUint32(d.bhs[40:44], uint32(off+sent))
				if off+sent+n > len(out) {
					return nil, errors.New("R2T beyond write buffer")
				}
				d.data = out[off+sent : off+sent+n]
				if err := s.send(d); err != nil {
					return nil, err
				}
				dataSN++
				sent += n
			}
		case opSCSIResp:
			if r.bhs[2] != 0 {
				return buf, fmt.Errorf("iSCSI response 0x%02x", r.bhs[2])
			}
			st := r.bhs[3]
			if st == 0 {
				return buf, nil
			}
			se := &SCSIError{Status: st}
			if len(r.data) >= 2 {
				sl := int(binary.BigEndian.Uint16(r.data[0:2]))
				sense := r.data[2:]
				if sl < len(sense) {
					sense = sense[:sl]
				}
				if len(sense) >= 14 {
					se.SenseKey = sense[2] & 0x0f
					se.ASC = sense[12]
					se.ASCQ = sense[13]
				}
			}
			return buf, se
		case opReject:
			return nil, errors.New("iSCSI PDU rejected by target")
		default:
			return nil, fmt.Errorf("unexpected iSCSI opcode 0x%02x", r.opcode())
		}
	}
}

// ReportLuns returns the LUN numbers the target exposes to us.
func (s *IscsiSession) ReportLuns() ([]uint16, error) {
	cdb := make([]byte, 12)
	cdb[0] = 0xA0
	binary.BigEndian.PutUint32(cdb[6:10], 4096)
	data, err := s.Command(0, cdb, 4096, nil)
	if err != nil {
		return nil, err
	}
	if len(data) < 8 {
		return nil, errors.New("REPORT LUNS: short response")
	}
	n := int(binary.BigEndian.Uint32(data[0:4])) / 8
	var luns []uint16
	for i := 0; i < n && 8+i*8+8 <= len(data); i++ {
		e := data[8+i*8 : 16+i*8]
		luns = append(luns, uint16(e[0]&0x3f)<<8|uint16(e[1]))
	}
	return luns, nil
}

// Inquiry returns the standard INQUIRY data or a VPD page.
func (s *IscsiSession) Inquiry(lun uint16, evpd bool, page byte) ([]byte, error) {
	cdb := make([]byte, 6)
	cdb[0] = 0x12
	if evpd {
		cdb[1] = 1
		cdb[2] = page
	}
	binary.BigEndian.PutUint16(cdb[3:5], 255)
	return s.Command(lun, cdb, 255, nil)
}

// ReadCapacity16 returns the number of blocks and the block size.
func (s *IscsiSession) ReadCapacity16(lun uint16) (uint64, uint32, error) {
	cdb := make([]byte, 16)
	cdb[0] = 0x9E
	cdb[1] = 0x10
	binary.BigEndian.PutUint32(cdb[10:14], 32)
	data, err := s.Command(lun, cdb, 32, nil)
	if err != nil {
		return 0, 0, err
	}
	if len(data) < 12 {
		return 0, 0, errors.New("READ CAPACITY(16): short response")
	}
	return binary.BigEndian.Uint64(data[0:8]) + 1, binary.BigEndian.Uint32(data[8:12]), nil
}

const maxBlocksPerCmd = 256

// ReadBlocks reads count blocks from lba with READ(10).
func (s *IscsiSession) ReadBlocks(lun uint16, lba uint32, count int, bs int) ([]byte, error) {
	out := make([]byte, 0, count*bs)
	for count > 0 {
		n := count
		if n > maxBlocksPerCmd {
			n = maxBlocksPerCmd
		}
		cdb := make([]byte, 10)
		cdb[0] = 0x28
		binary.BigEndian.PutUint32(cdb[2:6], lba)
		binary.BigEndian.PutUint16(cdb[7:9], uint16(n))
		data, err := s.Command(lun, cdb, n*bs, nil)
		if err != nil {
			return nil, err
		}
		if len(data) < n*bs {
			data = append(data, make([]byte, n*bs-len(data))...)
		}
		out = append(out, data[:n*bs]...)
		lba += uint32(n)
		count -= n
	}
	return out, nil
}

// WriteBlocks writes data (a multiple of bs) at lba with WRITE(10).
func (s *IscsiSession) WriteBlocks(lun uint16, lba uint32, data []byte, bs int) error {
	if len(data)%bs != 0 {
		return errors.New("write not block aligned")
	}
	for len(data) > 0 {
		n := len(data) / bs
		if n > maxBlocksPerCmd {
			n = maxBlocksPerCmd
		}
		cdb := make([]byte, 10)
		cdb[0] = 0x2A
		binary.BigEndian.PutUint32(cdb[2:6], lba)
		binary.BigEndian.PutUint16(cdb[7:9], uint16(n))
		if _, err := s.Command(lun, cdb, 0, data[:n*bs]); err != nil {
			return err
		}
		data = data[n*bs:]
		lba += uint32(n)
	}
	return nil
}

// ReadAt reads length bytes at byte offset off (block-aligned internally).
func (s *IscsiSession) ReadAt(lun uint16, off int64, length int, bs int) ([]byte, error) {
	first := off / int64(bs)
	last := (off + int64(length) + int64(bs) - 1) / int64(bs)
	data, err := s.ReadBlocks(lun, uint32(first), int(last-first), bs)
	if err != nil {
		return nil, err
	}
	start := int(off - first*int64(bs))
	return data[start : start+length], nil
}

// WriteAt writes data at byte offset off, read-modify-write for partial blocks.
func (s *IscsiSession) WriteAt(lun uint16, off int64, data []byte, bs int) error {
	first := off / int64(bs)
	last := (off + int64(len(data)) + int64(bs) - 1) / int64(bs)
	buf := make([]byte, (last-first)*int64(bs))
	start := int(off - first*int64(bs))
	if start != 0 || len(data)%bs != 0 {
		// read the edge blocks
		head, err := s.ReadBlocks(lun, uint32(first), 1, bs)
		if err != nil {
			return err
		}
		copy(buf, head)
		tail, err := s.ReadBlocks(lun, uint32(last-1), 1, bs)
		if err != nil {
			return err
		}
		copy(buf[len(buf)-bs:], tail)
	}
	copy(buf[start:], data)
	return s.WriteBlocks(lun, uint32(first), buf, bs)
}

// LunIdentity is what INQUIRY tells about a LUN.
type LunIdentity struct {
	DeviceType byte
	Qualifier  byte
	ScsiLevel  byte
	Vendor     string
	Product    string
	Revision   string
	Serial     string
	NAA        string // lowercase hex, preferred NAA designator
	T10        string
	Blocks     uint64
	BlockSize  uint32
}

// Identify runs INQUIRY (standard, VPD 0x80, 0x83) and READ CAPACITY(16).
func (s *IscsiSession) Identify(lun uint16) (*LunIdentity, error) {
	std, err := s.Inquiry(lun, false, 0)
	if err != nil {
		return nil, err
	}
	if len(std) < 36 {
		return nil, errors.New("INQUIRY: short response")
	}
	id := &LunIdentity{
		DeviceType: std[0] & 0x1f,
		Qualifier:  std[0] >> 5,
		ScsiLevel:  std[2],
		Vendor:     strings.TrimSpace(string(std[8:16])),
		Product:    strings.TrimSpace(string(std[16:32])),
		Revision:   strings.TrimSpace(string(std[32:36])),
	}
	if id.Qualifier != 0 || id.DeviceType != 0 {
		return id, nil
	}
	if v, err := s.Inquiry(lun, true, 0x80); err == nil && len(v) >= 4 {
		n := int(v[3])
		if 4+n <= len(v) {
			id.Serial = strings.TrimSpace(strings.Trim(string(v[4:4+n]), "\x00"))
		}
	}
	if v, err := s.Inquiry(lun, true, 0x83); err == nil {
		id.NAA, id.T10 = parseVPD83(v)
	}
	blocks, bs, err := s.ReadCapacity16(lun)
	if err != nil {
		return nil, err
	}
	id.Blocks, id.BlockSize = blocks, bs
	return id, nil
}

// parseVPD83 returns the preferred NAA designator (NAA 6, then 5, 2, 3) of
// association 0 (the logical unit), as lowercase hex, and the T10 vendor id.
func parseVPD83(v []byte) (naa string, t10 string) {
	if len(v) < 4 {
		return "", ""
	}
	total := int(binary.BigEndian.Uint16(v[2:4]))
	body := v[4:]
	if total < len(body) {
		body = body[:total]
	}
	best := map[byte]string{}
	for len(body) >= 4 {
		dlen := int(body[3])
		if 4+dlen > len(body) {
			break
		}
		typ := body[1] & 0x0f
		assoc := (body[1] >> 4) & 0x03
		id := body[4 : 4+dlen]
		if assoc == 0 {
			switch typ {
			case 3:
				if dlen > 0 {
					kind := id[0] >> 4
					if _, ok := best[kind]; !ok {
						best[kind] = hex.EncodeToString(id)
					}
				}
			case 1:
				if t10 == "" {
					t10 = strings.TrimSpace(strings.Trim(string(id), "\x00"))
				}
			}
		}
		body = body[4+dlen:]
	}
	for _, kind := range []byte{6, 5, 2, 3} {
		if s, ok := best[kind]; ok {
			return s, t10
		}
	}
	return "", t10
}

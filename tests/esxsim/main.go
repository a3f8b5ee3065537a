// esxsim: a standalone ESXi host simulator built on the govmomi 0.24 simulator,
// with software iSCSI that talks to real targets, VMFS volumes read from the LUNs,
// and datastore contents stored on the LUNs. See docs/esxsim.md.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Config is what the command line sets.
type Config struct {
	Listen         string
	Hostname       string
	DataDir        string
	IQN            string
	Username       string
	Password       string
	TLS            bool
	HeartbeatDelay time.Duration
	// RescanDelay is how long RescanAllHba and RescanHba hold the call open before they
	// answer: a real host answers a rescan when its scan is over (Profiles).
	RescanDelay   time.Duration
	Profile       string // the -profile these delays came from (before -heartbeat-delay/-rescan-delay)
	MountRegistry string
	Location      string

	// vCenter mode: a Datacenter with one cluster holding one HostSystem per name.
	VCenter bool
	Hosts   []string
	Cluster string
	DRS     bool
}

// Timing is how long the slow things of a host take.
type Timing struct {
	HeartbeatDelay time.Duration // power-on to guestHeartbeatStatus green
	RescanDelay    time.Duration // a rescan call held open before it answers
}

// Profiles: "lab" keeps the tests fast; "realistic" is a real host's pace, deterministic.
// On real hardware a guest's heartbeat turns green when VMware Tools start in the booted
// guest, 45 to 120 s after power-on (BIOS/UEFI POST, the OS boot, then the tools service),
// and a software iSCSI rescan holds its synchronous call for as long as discovery, logins and
// the LUN scan take: tens of seconds on a small host, minutes on a large one. Both values of
// "realistic" are longer than the 30 s a client socket might wait for an ordinary call.
var Profiles = map[string]Timing{
	"lab":       {HeartbeatDelay: time.Second, RescanDelay: 0},
	"realistic": {HeartbeatDelay: 45 * time.Second, RescanDelay: 35 * time.Second},
}

func profileNames() string {
	names := make([]string, 0, len(Profiles))
	for n := range Profiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func main() {
	cfg := Config{}
	flag.StringVar(&cfg.Listen, "listen", "127.0.0.1:18443", "SOAP listen address (in 127.0.0.0/8 or 198.18.0.0/15)")
	flag.StringVar(&cfg.Hostname, "hostname", "esxsim", "host name of the simulated ESXi host")
	flag.StringVar(&cfg.DataDir, "datadir", "", "state directory (datastore working copies, TLS key)")
	flag.StringVar(&cfg.IQN, "iqn", "", "software iSCSI initiator name (default iqn.1998-01.com.vmware:<hostname>)")
	flag.StringVar(&cfg.Username, "username", "root", "login user name (password from env ESXSIM_PASSWORD, default esxsim)")
	flag.BoolVar(&cfg.TLS, "tls", false, "serve https with a self-signed certificate kept in the data dir")
	profile := flag.String("profile", envOr("ESXSIM_PROFILE", "lab"), "timing profile: lab (fast) or realistic (as real hosts: heartbeat 45s after power-on, rescans 35s); env ESXSIM_PROFILE")
	heartbeat := flag.Duration("heartbeat-delay", -1, "time from power-on to guest heartbeat green (default: the profile's)")
	rescan := flag.Duration("rescan-delay", -1, "how long RescanAllHba/RescanHba hold the call before answering (default: the profile's)")
	flag.StringVar(&cfg.MountRegistry, "mount-registry", "", "directory shared by esxsim processes to detect double mounts (default $TMPDIR/esxsim-mounts)")
	vcenter := flag.Bool("vcenter", false, "serve a vCenter (apiType VirtualCenter) with a cluster of -hosts instead of one ESXi host")
	hosts := flag.String("hosts", "", "vCenter mode: comma-separated host names of the cluster (each gets iqn.1998-01.com.vmware:<name>)")
	flag.StringVar(&cfg.Cluster, "cluster", "cluster0", "vCenter mode: cluster name")
	flag.BoolVar(&cfg.DRS, "drs", true, "vCenter mode: DRS enabled on the cluster (places VMs registered without a host)")
	flag.Parse()
	t, ok := Profiles[*profile]
	if !ok {
		log.Fatalf("-profile %s: unknown; choose one of %s", *profile, profileNames())
	}
	cfg.Profile, cfg.HeartbeatDelay, cfg.RescanDelay = *profile, t.HeartbeatDelay, t.RescanDelay
	if *heartbeat >= 0 {
		cfg.HeartbeatDelay = *heartbeat
	}
	if *rescan >= 0 {
		cfg.RescanDelay = *rescan
	}
	cfg.VCenter = *vcenter
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			cfg.Hosts = append(cfg.Hosts, h)
		}
	}
	if cfg.VCenter && len(cfg.Hosts) == 0 {
		log.Fatal("-vcenter needs -hosts NAME[,NAME...]")
	}
	if !cfg.VCenter && len(cfg.Hosts) > 0 {
		log.Fatal("-hosts is for -vcenter mode; a standalone host is named with -hostname")
	}

	cfg.Password = os.Getenv("ESXSIM_PASSWORD")
	if cfg.Password == "" {
		cfg.Password = "esxsim"
	}
	if cfg.IQN == "" && !cfg.VCenter {
		cfg.IQN = "iqn.1998-01.com.vmware:" + cfg.Hostname
	}
	if cfg.DataDir == "" {
		d, err := ioutil.TempDir("", "esxsim-")
		if err != nil {
			log.Fatal(err)
		}
		cfg.DataDir = d
	}
	if cfg.MountRegistry == "" {
		cfg.MountRegistry = filepath.Join(os.TempDir(), "esxsim-mounts")
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil || !IsLabAddress(host) {
		log.Fatalf("-listen %s: must be host:port with a host in 127.0.0.0/8 or 198.18.0.0/15", cfg.Listen)
	}
	log.SetPrefix("esxsim[" + cfg.Hostname + "] ")
	log.SetOutput(os.Stderr)

	srv, info, err := Start(cfg)
	if err != nil {
		log.Fatal(err)
	}
	line, _ := json.Marshal(info)
	fmt.Println(string(line))
	os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	log.Printf("shutting down")
	srv.Shutdown()
}

// StartInfo is the JSON line printed on stdout when the server is ready.
type StartInfo struct {
	URL        string `json:"url"`
	Thumbprint string `json:"thumbprint"`
	Hostname   string `json:"hostname"`
	IQN        string `json:"iqn"`
	Username   string `json:"username"`
	PID        int    `json:"pid"`
	// The timing in effect (-profile, -heartbeat-delay, -rescan-delay), in seconds.
	Profile         string  `json:"profile"`
	HeartbeatDelayS float64 `json:"heartbeat_delay_s"`
	RescanDelayS    float64 `json:"rescan_delay_s"`
	// vCenter mode only
	APIType string     `json:"api_type"`
	Hosts   []HostInfo `json:"hosts,omitempty"`
	Cluster string     `json:"cluster,omitempty"`
	DRS     *bool      `json:"drs,omitempty"`
}

// HostInfo names one host of a vCenter-mode esxsim.
type HostInfo struct {
	Name string `json:"name"`
	Moid string `json:"moid"`
	IQN  string `json:"iqn"`
}

// Server is a running esxsim.
type Server struct {
	http *http.Server
	ln   net.Listener
	sim  *Sim
}

// Shutdown syncs datastores to their LUNs and stops serving.
func (s *Server) Shutdown() {
	s.http.Close()
	s.sim.Close()
}

// Start builds the simulated host and serves it.
func Start(cfg Config) (*Server, *StartInfo, error) {
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, nil, err
	}
	cfg.DataDir = abs
	if err := os.MkdirAll(cfg.DataDir, 0700); err != nil {
		return nil, nil, err
	}
	// Datastore URLs are ds:///vmfs/volumes/<uuid>/ as on real ESXi. The simulator uses
	// the URL as a local path, so run inside the data dir: "ds:" is a directory there.
	if err := os.Chdir(cfg.DataDir); err != nil {
		return nil, nil, err
	}
	_ = os.RemoveAll(filepath.Join(cfg.DataDir, "ds:"))

	world, err := NewSim(cfg)
	if err != nil {
		return nil, nil, err
	}

	var tlsConfig *tls.Config
	thumb := ""
	scheme := "http"
	if cfg.TLS {
		cert, err := loadOrCreateCert(cfg)
		if err != nil {
			return nil, nil, err
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert}
		sum := sha256.Sum256(cert.Certificate[0])
		parts := make([]string, len(sum))
		for i, b := range sum {
			parts[i] = fmt.Sprintf("%02X", b)
		}
		thumb = strings.Join(parts, ":")
		scheme = "https"
	}

	u := &url.URL{Scheme: scheme, Host: cfg.Listen, Path: "/sdk", User: url.UserPassword(cfg.Username, cfg.Password)}
	world.svc.Listen = u
	world.svc.TLS = tlsConfig
	simulator.Map.SessionManager().ServiceHostName = cfg.Listen
	world.svc.RegisterSDK(simulator.Map)

	mux := http.NewServeMux()
	sdk := world.soapHandler()
	mux.Handle("/sdk", sdk)
	mux.Handle("/sdk/vimService", sdk)
	mux.HandleFunc("/sdk/vimServiceVersions.xml", world.svc.ServiceVersions)
	mux.Handle("/folder/", world.syncAfter(http.HandlerFunc(world.svc.ServeDatastore)))
	mux.HandleFunc("/about", world.svc.About)
	world.guestHandlers(mux) // /guestFile transfers, /esxsim/customization, /esxsim/guest

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, nil, err
	}
	hs := &http.Server{Handler: mux, TLSConfig: tlsConfig, ErrorLog: log.New(os.Stderr, "esxsim-http ", log.LstdFlags)}
	go func() {
		var err error
		if tlsConfig != nil {
			err = hs.ServeTLS(ln, "", "")
		} else {
			err = hs.Serve(ln)
		}
		if err != nil && err != http.ErrServerClosed {
			log.Printf("serve: %v", err)
		}
	}()
	info := &StartInfo{
		URL:        fmt.Sprintf("%s://%s/sdk", scheme, cfg.Listen),
		Thumbprint: thumb,
		Hostname:   cfg.Hostname,
		IQN:        cfg.IQN,
		Username:   cfg.Username,
		PID:        os.Getpid(),
		APIType:    "HostAgent",

		Profile:         cfg.Profile,
		HeartbeatDelayS: cfg.HeartbeatDelay.Seconds(),
		RescanDelayS:    cfg.RescanDelay.Seconds(),
	}
	if cfg.VCenter {
		info.APIType = "VirtualCenter"
		info.IQN = ""
		info.Cluster = cfg.Cluster
		info.DRS = types.NewBool(cfg.DRS)
		for _, h := range world.hosts {
			info.Hosts = append(info.Hosts, HostInfo{Name: h.cfg.Hostname, Moid: h.host.Self.Value, IQN: h.cfg.IQN})
			log.Printf("host %s (%s), initiator %s", h.cfg.Hostname, h.host.Self.Value, h.cfg.IQN)
		}
		log.Printf("serving %s as vCenter %s, cluster %s (DRS %v)", info.URL, cfg.Hostname, cfg.Cluster, cfg.DRS)
	} else {
		log.Printf("serving %s as %s (initiator %s)", info.URL, cfg.Hostname, cfg.IQN)
	}
	log.Printf("timing (profile %s): guest heartbeat %v after power-on, rescans held %v", cfg.Profile, cfg.HeartbeatDelay, cfg.RescanDelay)
	return &Server{http: hs, ln: ln, sim: world}, info, nil
}

func loadOrCreateCert(cfg Config) (tls.Certificate, error) {
	certPath := filepath.Join(cfg.DataDir, "tls.crt")
	keyPath := filepath.Join(cfg.DataDir, "tls.key")
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	host, _, _ := net.SplitHostPort(cfg.Listen)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cfg.Hostname, Organization: []string{"esxsim"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{cfg.Hostname, "localhost"},
		IPAddresses:  []net.IP{net.ParseIP(host)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	if err := ioutil.WriteFile(certPath, certPEM, 0600); err != nil {
		return tls.Certificate{}, err
	}
	if err := ioutil.WriteFile(keyPath, keyPEM, 0600); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

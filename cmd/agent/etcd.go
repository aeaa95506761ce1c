package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"

	"github.com/etcd-defrag-agent/etcd-defrag-agent/config"
)

// etcdClientConfig turns the connection settings into a client configuration
// without endpoints, the way etcdctl does: TLS when a certificate flag is set
// or --insecure-transport=false, auth when --user is set. It also returns the
// etcd user the agent acts as: --user, else the client certificate's common
// name (etcd's client-cert auth), else "". Errors name the flag.
func etcdClientConfig(cfg config.Config) (clientv3.Config, string, error) {
	user, password := cfg.Credentials()
	c := clientv3.Config{
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    cfg.KeepaliveTime,
		DialKeepAliveTimeout: cfg.KeepaliveTimeout,
		Username:             user,
		Password:             password,
	}
	if cfg.CACert != "" || cfg.Cert != "" || cfg.Key != "" {
		if cfg.CACert != "" {
			// etcd's loader skips what is not PEM and returns an empty pool,
			// which would only fail later, at every handshake.
			if err := checkCABundle(cfg.CACert); err != nil {
				return c, "", fmt.Errorf("--cacert %s: %w", cfg.CACert, err)
			}
		}
		info := transport.TLSInfo{CertFile: cfg.Cert, KeyFile: cfg.Key, TrustedCAFile: cfg.CACert, InsecureSkipVerify: cfg.InsecureSkipTLSVerify}
		tc, err := info.ClientConfig()
		if err != nil {
			return c, "", fmt.Errorf("%s: %w", tlsFlags(cfg), err)
		}
		c.TLS = tc
		if user == "" && cfg.Cert != "" {
			cn, err := certCommonName(cfg.Cert)
			if err != nil {
				return c, "", fmt.Errorf("--cert %s: %w", cfg.Cert, err)
			}
			user = cn
		}
	} else if !cfg.InsecureTransport || hasHTTPS(cfg.Endpoints) {
		c.TLS = &tls.Config{InsecureSkipVerify: cfg.InsecureSkipTLSVerify} //nolint:gosec // the user asked for it
	}
	return c, user, nil
}

// tlsFlags names the TLS flags that are set, for an error message.
func tlsFlags(cfg config.Config) string {
	var set []string
	for _, f := range []struct{ name, v string }{{"--cacert", cfg.CACert}, {"--cert", cfg.Cert}, {"--key", cfg.Key}} {
		if f.v != "" {
			set = append(set, f.name+" "+f.v)
		}
	}
	return strings.Join(set, ", ")
}

func hasHTTPS(eps []string) bool {
	for _, ep := range eps {
		if strings.HasPrefix(ep, "https://") {
			return true
		}
	}
	return false
}

// checkCABundle makes sure path holds at least one PEM certificate.
func checkCABundle(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return errors.New("no PEM certificate in the CA bundle")
	}
	return nil
}

// certCommonName reads the first certificate's subject common name.
func certCommonName(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return "", errors.New("no PEM certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", err
	}
	return cert.Subject.CommonName, nil
}

// dialEtcd makes a client for endpoints. etcd's client logs through zap;
// its warnings and errors go to the agent's logger at debug level, so they
// help when asked for and do not flood otherwise.
func dialEtcd(tmpl clientv3.Config, endpoints []string, logger *slog.Logger, opts ...grpc.DialOption) (*clientv3.Client, error) {
	c := tmpl
	c.Endpoints = endpoints
	c.DialOptions = append(slices.Clone(c.DialOptions), opts...)
	c.Logger = zap.New(slogCore{logger: logger.With("component", "etcd-client")})
	cli, err := clientv3.New(c)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}

// slogCore is a zapcore.Core that forwards warnings and errors to slog at
// debug level.
type slogCore struct {
	logger *slog.Logger
	fields []zapcore.Field
}

func (s slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (s slogCore) With(fs []zapcore.Field) zapcore.Core {
	return slogCore{logger: s.logger, fields: append(append([]zapcore.Field(nil), s.fields...), fs...)}
}

func (s slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if s.Enabled(e.Level) {
		return ce.AddCore(e, s)
	}
	return ce
}

func (s slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), s.fields...), fs...) {
		f.AddTo(enc)
	}
	args := make([]any, 0, 2*len(enc.Fields)+2)
	args = append(args, "zap_level", e.Level.String())
	for k, v := range enc.Fields {
		args = append(args, k, v)
	}
	s.logger.Debug(e.Message, args...) //nolint:sloglint // the etcd client's message
	return nil
}

func (s slogCore) Sync() error { return nil }

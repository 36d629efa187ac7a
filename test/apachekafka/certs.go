package apachekafka

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Certs are the PEM files of a private CA made for one cluster: the
// brokers' certificate (for 127.0.0.1 and localhost) and a client's, whose
// principal on the mutual-TLS listener is ClientPrincipal.
type Certs struct {
	// CA is the CA's certificate, which signed the two others.
	CA string
	// ClientCert and ClientKey are the client's certificate and key.
	ClientCert, ClientKey string
	// OtherCA is a CA that signed nothing here: a client trusting only it
	// must refuse the brokers.
	OtherCA string
	// brokerKeystore holds the brokers' key and certificate, as Kafka's
	// PEM keystore reads them.
	brokerKeystore string
}

// ClientPrincipal is the principal Kafka makes of the client certificate.
const ClientPrincipal = "User:CN=queue-publish-client"

func writeCerts(dir string) (Certs, error) {
	c := Certs{
		CA:             filepath.Join(dir, "ca.pem"),
		OtherCA:        filepath.Join(dir, "other-ca.pem"),
		ClientCert:     filepath.Join(dir, "client.pem"),
		ClientKey:      filepath.Join(dir, "client-key.pem"),
		brokerKeystore: filepath.Join(dir, "broker-keystore.pem"),
	}
	ca, caKey, err := newCert("queue-publish test CA", nil, nil, nil)
	if err != nil {
		return c, err
	}
	other, _, err := newCert("an unrelated CA", nil, nil, nil)
	if err != nil {
		return c, err
	}
	broker, brokerKey, err := newCert("127.0.0.1", ca, caKey, func(t *x509.Certificate) {
		t.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		t.DNSNames = []string{"localhost"}
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	})
	if err != nil {
		return c, err
	}
	client, clientKey, err := newCert("queue-publish-client", ca, caKey, func(t *x509.Certificate) {
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	if err != nil {
		return c, err
	}
	keystore := append(pemKey(brokerKey), pemCert(broker)...)
	for file, content := range map[string][]byte{
		c.CA:             pemCert(ca),
		c.OtherCA:        pemCert(other),
		c.ClientCert:     pemCert(client),
		c.ClientKey:      pemKey(clientKey),
		c.brokerKeystore: keystore,
	} {
		if err := os.WriteFile(file, content, 0o600); err != nil {
			return c, err
		}
	}
	return c, nil
}

// newCert makes a certificate named cn, signed by parent, or a CA's
// self-signed one if parent is nil; edit adjusts the template.
func newCert(cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, edit func(*x509.Certificate)) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	t := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if parent == nil {
		t.IsCA, t.BasicConstraintsValid = true, true
		t.KeyUsage |= x509.KeyUsageCertSign
		parent, parentKey = t, key
	}
	if edit != nil {
		edit(t)
	}
	der, err := x509.CreateCertificate(rand.Reader, t, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// pemKey encodes key as PKCS#8, the one unencrypted form Kafka's PEM
// keystore reads.
func pemKey(key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err) // an ECDSA P-256 key always marshals
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

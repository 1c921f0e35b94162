/**
 * Certificate proof: how the accepting server checks the certificate of the server that dialled
 * it. Deno's TLS listener cannot ask for a client certificate, so the dialler proves its own
 * inside the encrypted, authenticated link instead: right after the handshake it sends its
 * certificate and an ECDSA signature, made with its TLS key, over both handshake nonces. The
 * acceptor checks that the certificate was issued by its CA and is in date, and that it made
 * this signature for this connection (fresh nonces: a proof cannot be replayed elsewhere).
 * Names are not checked this way round: behind NAT a dialler's address says nothing.
 */
import { VnetError } from "../errors.ts";
import { importSigningKey, parseCertificate } from "./pki.ts";

const ECDSA = { name: "ECDSA", hash: "SHA-256" } as const;

/** A server's own certificate and key, as it proves them to the peers it dials. */
export interface PeerIdentity {
  cert: string;
  key: CryptoKey;
}

export async function loadIdentity(certPem: string, keyPem: string): Promise<PeerIdentity> {
  return { cert: certPem, key: await importSigningKey(keyPem, "TLS key") };
}

function transcript(dialerNonce: Uint8Array, acceptorNonce: Uint8Array): Uint8Array<ArrayBuffer> {
  const label = new TextEncoder().encode("vnet/1 cert-proof ");
  const out = new Uint8Array(label.length + dialerNonce.length + acceptorNonce.length);
  out.set(label);
  out.set(dialerNonce, label.length);
  out.set(acceptorNonce, label.length + dialerNonce.length);
  return out;
}

/** The dialler's proof, as a message payload. */
export async function makeProof(
  identity: PeerIdentity,
  dialerNonce: Uint8Array,
  acceptorNonce: Uint8Array,
): Promise<Uint8Array> {
  const sig = new Uint8Array(
    await crypto.subtle.sign(ECDSA, identity.key, transcript(dialerNonce, acceptorNonce)),
  );
  return new TextEncoder().encode(
    JSON.stringify({ cert: identity.cert, sig: btoa(String.fromCharCode(...sig)) }),
  );
}

/**
 * Checks a proof against the CA; returns the certificate's subject. Throws a VnetError saying
 * what is wrong with it.
 */
export async function checkProof(
  payload: Uint8Array,
  caPem: string,
  dialerNonce: Uint8Array,
  acceptorNonce: Uint8Array,
): Promise<string> {
  let cert: ReturnType<typeof parseCertificate>;
  let sig: Uint8Array;
  try {
    const o = JSON.parse(new TextDecoder().decode(payload));
    cert = parseCertificate(String(o.cert), "peer certificate");
    sig = Uint8Array.from(atob(String(o.sig)), (c) => c.charCodeAt(0));
  } catch (e) {
    throw new VnetError(`malformed certificate proof: ${(e as Error).message}`);
  }
  const ca = parseCertificate(caPem, "TLS CA");
  if (!await cert.verify({ publicKey: ca.publicKey, signatureOnly: true })) {
    throw new VnetError(`peer certificate '${cert.subject}' was not issued by this server's CA`);
  }
  const now = new Date();
  if (now < cert.notBefore || now > cert.notAfter) {
    throw new VnetError(
      `peer certificate '${cert.subject}' is not valid now (valid ${cert.notBefore.toISOString()} to ${cert.notAfter.toISOString()})`,
    );
  }
  const key = await cert.publicKey.export(
    { name: "ECDSA", namedCurve: "P-256" },
    ["verify"],
  ).catch(() => null);
  const data = transcript(dialerNonce, acceptorNonce);
  if (!key || !await crypto.subtle.verify(ECDSA, key, sig as Uint8Array<ArrayBuffer>, data)) {
    throw new VnetError(`peer certificate '${cert.subject}': the proof is not signed by its key`);
  }
  return cert.subject;
}

// Registration tokens and worker credentials: random secrets shown once and
// stored only as SHA-256 hashes. The prefix names the kind of secret (so a
// leaked one is recognisable in a scanner) plus a few characters to tell
// tokens apart in listings; it is never enough to use one.

import { createHash, randomBytes } from "node:crypto";

export type SecretKind = "registration" | "worker";

const PREFIXES: Record<SecretKind, string> = { registration: "mreg_", worker: "mwkr_" };
/** Characters of the secret kept in the clear for listings. */
const VISIBLE_CHARS = 12;

export interface Secret {
  secret: string;
  hash: string;
  prefix: string;
}

export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret, "utf8").digest("hex");
}

export function newSecret(kind: SecretKind): Secret {
  const secret = PREFIXES[kind] + randomBytes(32).toString("base64url");
  return { secret, hash: hashSecret(secret), prefix: secret.slice(0, VISIBLE_CHARS) };
}

/** The credential in an `authorization: Bearer <credential>` value, or null. */
export function bearer(value: string | undefined): string | null {
  if (value === undefined) return null;
  const match = /^Bearer\s+(\S+)$/i.exec(value.trim());
  return match ? match[1] : null;
}

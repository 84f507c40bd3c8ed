// Converting the values raw SQL rows carry into the records' types. Both
// drivers return rows through MikroORM's type overrides, and they differ:
//
//   column        pg                  PGlite
//   timestamptz   string (ISO-ish)    string (ISO-ish)
//   bigint        string              number
//   bytea         Buffer              Uint8Array
//   int, bool, uuid, text, text[], jsonb: the JS type on both.
//
// A Date is accepted too, should a driver ever hand one back.

/** A timestamptz value as a Date. */
export function toDate(value: unknown): Date {
  return value instanceof Date ? value : new Date(value as string);
}

export function toDateOrNull(value: unknown): Date | null {
  return value === null || value === undefined ? null : toDate(value);
}

/** A bigint (or int) column as a number. */
export function toNumberOrNull(value: unknown): number | null {
  return value === null || value === undefined ? null : Number(value);
}

/** A bytea value as a plain Uint8Array over the same memory (a Buffer is one already, but a subclass). */
export function toBytes(value: unknown): Uint8Array {
  const bytes = value as Uint8Array;
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A Uint8Array as a Buffer over the same memory, the bytea parameter type pg sends in binary. */
export function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** `$n` placeholders for `count` parameters starting after `offset`: "($3, $4, $5)". */
export function placeholders(offset: number, count: number): string {
  let out = "(";
  for (let i = 1; i <= count; i++) out += i === 1 ? `$${offset + i}` : `, $${offset + i}`;
  return `${out})`;
}

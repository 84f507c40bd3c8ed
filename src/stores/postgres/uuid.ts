// Ids arrive from API callers and agents. A string that is not a UUID cannot
// name any row, and Postgres would reject it with a type error rather than
// find nothing, so repositories answer "not found" before asking.

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(value: string): boolean {
  return UUID.test(value);
}

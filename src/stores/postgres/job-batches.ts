// Group commit for the job hot paths. Transitions (assign, accept, finish,
// ...) and job inserts made in one turn of the event loop are written by one
// statement each: one round trip and one commit for all of them, instead of
// one of each per job. A scheduler placing a page of jobs, or a replica whose
// agents report hundreds of finishes a second, pays per turn, not per job.
//
// A transition batch keeps the single statement's guarantees per job: the
// fence is checked on each row, the attempt change rides on the job rows the
// UPDATE matched, and jobs whose fence fails are left alone (the caller gets
// null). The rows are locked in id order before they are changed, so two
// batches that share jobs (two replicas) wait for each other rather than
// deadlock.
//
// Only items of one shape share a statement: same fence states, same fields
// set, same kind of attempt change. A job appears at most once per statement,
// and its transitions are written in the order they were asked for. A second
// transition of a job whose first still waits for the turn is composed into
// it when the first leaves the job in a state the second's fence allows (an
// acceptance followed by the finish of a job that ended at once: one write,
// not two); otherwise it waits for the first's statement and goes in a later
// one. A composed transition that finds its fence unmet is tried again part
// by part, so each caller gets what it would have got alone.
// If a batch statement fails (a duplicate attempt, say), each of its items is
// tried again on its own, so one bad item fails only its own caller.
//
// Values travel as one JSON parameter, read by jsonb_to_recordset into typed
// columns: any number of items, one parameter, no per-item placeholders.

import type { AttemptChange, JobFence, JobPatch } from "../database.ts";

/** The SQL type of each job field a transition may set, by field. */
const PATCH_TYPES: Readonly<Record<keyof JobPatch, { column: string; type: string }>> = {
  state: { column: "state", type: "text" },
  attempt: { column: "attempt", type: "int" },
  workerId: { column: "worker_id", type: "uuid" },
  exitCode: { column: "exit_code", type: "int" },
  failureReason: { column: "failure_reason", type: "text" },
  message: { column: "message", type: "text" },
  resolvedPoolId: { column: "resolved_pool_id", type: "uuid" },
  poolRule: { column: "pool_rule", type: "text" },
  poolReason: { column: "pool_reason", type: "text" },
  workerReason: { column: "worker_reason", type: "text" },
  builtinWorker: { column: "builtin_worker", type: "boolean" },
  startedAt: { column: "started_at", type: "timestamptz" },
  endedAt: { column: "ended_at", type: "timestamptz" },
  queueDeadline: { column: "queue_deadline", type: "timestamptz" },
};

/** The SQL type of each attempt field, by field (the insert sets all of them). */
const ATTEMPT_TYPES: Readonly<Record<string, { column: string; type: string }>> = {
  workerId: { column: "worker_id", type: "uuid" },
  state: { column: "state", type: "text" },
  assignedAt: { column: "assigned_at", type: "timestamptz" },
  acceptedAt: { column: "accepted_at", type: "timestamptz" },
  endedAt: { column: "ended_at", type: "timestamptz" },
  outcome: { column: "outcome", type: "text" },
  exitCode: { column: "exit_code", type: "int" },
  lastSeq: { column: "last_seq", type: "int" },
};
const INSERT_FIELDS = ["workerId", "state", "assignedAt", "acceptedAt", "endedAt", "outcome", "exitCode", "lastSeq"] as const;

export interface TransitionItem {
  jobId: string;
  fence: JobFence;
  patch: JobPatch;
  change: AttemptChange | undefined;
}

/**
 * The item with its attempt change normalized (an insert and an update of the
 * same attempt become one insert of the updated row) and undefined fields
 * dropped. Throws on a field the batch statement does not know.
 */
export function normalizeTransition(item: TransitionItem): TransitionItem {
  let insert = item.change?.insert;
  let update = item.change?.update;
  if (insert !== undefined && update !== undefined && update.attempt === insert.attempt) {
    insert = { ...insert, ...definedOnly(update.patch) };
    update = undefined;
  }
  if (update !== undefined) {
    update = { attempt: update.attempt, patch: definedOnly(update.patch) };
    for (const key of Object.keys(update.patch)) {
      if (ATTEMPT_TYPES[key] === undefined) throw new Error(`jobs.transition: unknown attempt field "${key}"`);
    }
    if (Object.keys(update.patch).length === 0) update = undefined;
  }
  const patch = definedOnly(item.patch);
  for (const key of Object.keys(patch)) {
    if (!(key in PATCH_TYPES)) throw new Error(`jobs.transition: unknown job field "${key}"`);
  }
  const change = insert === undefined && update === undefined ? undefined : { insert, update };
  return { jobId: item.jobId, fence: item.fence, patch, change };
}

/** Items with the same shape can share one statement. */
export function transitionShape(item: TransitionItem): string {
  const { fence, patch, change } = item;
  return [
    fence.states.join(","),
    fence.attempt === undefined ? "" : "a",
    fence.workerId === undefined ? "" : "w",
    Object.keys(patch).sort().join(","),
    change?.insert === undefined ? "" : "i",
    change?.update === undefined ? "" : `u:${Object.keys(change.update.patch).sort().join(",")}`,
  ].join("|");
}

/**
 * One statement for items of one shape (normalized, distinct job ids).
 * Returns the SQL and its parameters; rows come back as the jobs rows changed
 * (or locked, when the patch is empty).
 */
export function transitionBatchStatement(
  jobsTable: string,
  attemptsTable: string,
  items: TransitionItem[],
): { sql: string; params: unknown[] } {
  const [first] = items;
  if (first === undefined) throw new Error("transitionBatchStatement: no items");
  const patchKeys = Object.keys(first.patch).sort() as Array<keyof JobPatch>;
  const insert = first.change?.insert !== undefined;
  const updateKeys = first.change?.update === undefined ? [] : Object.keys(first.change.update.patch).sort();
  const withAttempt = first.fence.attempt !== undefined;
  const withWorker = first.fence.workerId !== undefined;

  // Record columns: id, fence values, p<n> per patch field, i<n> per insert field, ua + u<n> per update field.
  const columns = ["id uuid"];
  if (withAttempt) columns.push("fa int");
  if (withWorker) columns.push("fw uuid");
  patchKeys.forEach((key, n) => columns.push(`p${n} ${PATCH_TYPES[key].type}`));
  if (insert) {
    columns.push("ia int");
    INSERT_FIELDS.forEach((key, n) => columns.push(`i${n} ${ATTEMPT_TYPES[key]!.type}`));
  }
  if (updateKeys.length > 0) {
    columns.push("ua int");
    updateKeys.forEach((key, n) => columns.push(`u${n} ${ATTEMPT_TYPES[key]!.type}`));
  }

  const records = items.map((item) => {
    const record: Record<string, unknown> = { id: item.jobId };
    if (withAttempt) record.fa = item.fence.attempt;
    if (withWorker) record.fw = item.fence.workerId;
    patchKeys.forEach((key, n) => {
      record[`p${n}`] = item.patch[key];
    });
    const change = item.change;
    if (insert && change?.insert !== undefined) {
      record.ia = change.insert.attempt;
      INSERT_FIELDS.forEach((key, n) => {
        record[`i${n}`] = change.insert![key];
      });
    }
    if (updateKeys.length > 0 && change?.update !== undefined) {
      record.ua = change.update.attempt;
      updateKeys.forEach((key, n) => {
        record[`u${n}`] = (change.update!.patch as Record<string, unknown>)[key];
      });
    }
    return record;
  });

  let fence = "t.state = any($2::text[])";
  if (withAttempt) fence += " and t.attempt = i.fa";
  if (withWorker) fence += " and t.worker_id = i.fw";
  const ctes = [
    `i as (select * from jsonb_to_recordset($1::jsonb) as i(${columns.join(", ")}))`,
    // Lock the rows that meet their fence, in id order (no deadlock between batches).
    // `t.id = any($3)` lets the planner find the rows by the primary key:
    // it takes jsonb_to_recordset for 100 rows, and with that estimate a
    // jobs table of up to tens of thousands of rows (dead ones included)
    // was scanned whole, on every batch, instead.
    `l as materialized (select t.id from ${jobsTable} t join i on t.id = i.id where t.id = any($3::uuid[]) and ${fence} order by t.id for update of t)`,
  ];
  if (patchKeys.length === 0) {
    ctes.push(`j as (select t.* from ${jobsTable} t join l on t.id = l.id)`);
  } else {
    const sets = patchKeys.map((key, n) => `${PATCH_TYPES[key].column} = i.p${n}`).join(", ");
    ctes.push(`j as (update ${jobsTable} t set ${sets} from i join l on l.id = i.id where t.id = i.id returning t.*)`);
  }
  if (insert) {
    const targets = ["job_id", "attempt", ...INSERT_FIELDS.map((key) => ATTEMPT_TYPES[key]!.column)].join(", ");
    const values = ["i.id", "i.ia", ...INSERT_FIELDS.map((_, n) => `i.i${n}`)].join(", ");
    ctes.push(`a as (insert into ${attemptsTable} (${targets}) select ${values} from i join j on j.id = i.id returning 1)`);
  }
  if (updateKeys.length > 0) {
    const sets = updateKeys.map((key, n) => `${ATTEMPT_TYPES[key]!.column} = i.u${n}`).join(", ");
    ctes.push(
      `u as (update ${attemptsTable} t set ${sets} from i join j on j.id = i.id where t.job_id = i.id and t.attempt = i.ua returning 1)`,
    );
  }
  return { sql: `with ${ctes.join(", ")} select * from j`, params: [JSON.stringify(records), first.fence.states, items.map((item) => item.jobId)] };
}

/**
 * One transition doing what `earlier` and then `later` would, or undefined
 * when that cannot be known without reading the row. Both are normalized and
 * of the same job. The earlier must set the state, which the later's fence
 * must allow, and leave attempt and worker as they were (the later's fence on
 * them is then the earlier's); the attempt changes must touch one attempt row.
 */
export function composeTransitions(earlier: TransitionItem, later: TransitionItem): TransitionItem | undefined {
  const { fence, patch } = earlier;
  if (patch.state === undefined || !later.fence.states.includes(patch.state)) return undefined;
  if (patch.attempt !== undefined || patch.workerId !== undefined) return undefined;
  if (later.fence.attempt !== undefined && later.fence.attempt !== fence.attempt) return undefined;
  if (later.fence.workerId !== undefined && later.fence.workerId !== fence.workerId) return undefined;
  const first = earlier.change;
  const second = later.change;
  if (second?.insert !== undefined) return undefined;
  let change: AttemptChange | undefined;
  if (second?.update === undefined) {
    change = first;
  } else if (first === undefined) {
    change = second;
  } else if (first.insert === undefined && first.update !== undefined && first.update.attempt === second.update.attempt) {
    change = { update: { attempt: first.update.attempt, patch: { ...first.update.patch, ...second.update.patch } } };
  } else if (first.update === undefined && first.insert !== undefined && first.insert.attempt === second.update.attempt) {
    change = { insert: { ...first.insert, ...second.update.patch } };
  } else {
    return undefined;
  }
  return { jobId: earlier.jobId, fence, patch: { ...patch, ...later.patch }, change };
}

interface Part<I, O> {
  item: I;
  resolve: (value: O) => void;
  reject: (error: unknown) => void;
}

type Outcome<O> = { ok: true; value: O } | { ok: false; error: unknown };

/** What one statement row writes: one item, or several of one identity composed into one. */
interface Entry<I, O> {
  item: I;
  parts: Array<Part<I, O>>;
}

export interface BatchOptions<I, O> {
  /** Items with different keys never share a statement. */
  shape(item: I): string;
  /** Items with the same identity (a job changed twice) are written in the order they came, never at once. */
  identity(item: I): string;
  /** Writes several items with one statement; one result per item, in order. */
  many(items: I[]): Promise<O[]>;
  /** Writes one item on its own (a batch of one, or a retry after the batch failed). */
  one(item: I): Promise<O>;
  /**
   * One item that does what `earlier` and then `later` would, for two items
   * of one identity waiting for the same turn; undefined when they cannot be
   * written as one. Without it the later waits for the earlier's statement.
   */
  compose?(earlier: I, later: I): I | undefined;
  /**
   * Whether a result says the item took effect. A composed item that did not
   * is written again part by part, in order, so each part's caller gets what
   * it would have got on its own.
   */
  applied?(result: O): boolean;
}

/**
 * Collects the calls made in one turn of the event loop and writes them on the
 * next: `many` per shape for two or more items, `one` for a lone item.
 *
 * Calls with the same identity keep their order. A call made while an earlier
 * one of its identity waits for the same turn is composed into it where
 * `compose` allows (one row written, both callers given its result);
 * otherwise, and while an earlier one's statement is in flight, it waits and
 * goes in a later statement.
 */
export function createBatcher<I, O>(options: BatchOptions<I, O>): (item: I) => Promise<O> {
  let pending: Array<Entry<I, O>> = [];
  /** Per identity: its entry waiting for the turn or in flight, and the calls held behind it. */
  const active = new Map<string, { entry: Entry<I, O>; inFlight: boolean; held: Array<Part<I, O>> }>();

  const write = (item: I): Promise<Outcome<O>> =>
    options.one(item).then(
      (value) => ({ ok: true, value }),
      (error: unknown) => ({ ok: false, error }),
    );

  /** What each part of an entry gets: the entry's outcome, or, where a composed entry failed or did not apply, its own. */
  const perPart = async (entry: Entry<I, O>, outcome: Outcome<O>): Promise<Array<Outcome<O>>> => {
    const failed = !outcome.ok || (options.applied !== undefined && !options.applied(outcome.value));
    if (entry.parts.length === 1 || !failed) return entry.parts.map(() => outcome);
    const outcomes: Array<Outcome<O>> = [];
    for (const part of entry.parts) outcomes.push(await write(part.item));
    return outcomes;
  };

  /**
   * The identity's writes are done: what was held behind them is queued
   * first, then the callers hear back (what they ask for next comes after).
   */
  const complete = (entry: Entry<I, O>, outcomes: Array<Outcome<O>>): void => {
    const identity = options.identity(entry.item);
    const slot = active.get(identity);
    active.delete(identity);
    for (const part of slot?.held ?? []) add(part);
    entry.parts.forEach((part, n) => {
      const outcome = outcomes[n]!;
      if (outcome.ok) part.resolve(outcome.value);
      else part.reject(outcome.error);
    });
  };

  const settle = async (group: Array<Entry<I, O>>): Promise<void> => {
    let outcomes: Array<Outcome<O>>;
    if (group.length === 1) {
      outcomes = [await write(group[0]!.item)];
    } else {
      try {
        outcomes = (await options.many(group.map((entry) => entry.item))).map((value) => ({ ok: true, value }));
      } catch {
        // Find out whose item it was: each on its own, each with its own outcome.
        outcomes = await Promise.all(group.map((entry) => write(entry.item)));
      }
    }
    await Promise.all(group.map(async (entry, n) => complete(entry, await perPart(entry, outcomes[n]!))));
  };

  const flush = () => {
    const taken = pending;
    pending = [];
    const groups = new Map<string, Array<Entry<I, O>>>();
    for (const entry of taken) {
      const identity = options.identity(entry.item);
      active.get(identity)!.inFlight = true;
      const shape = options.shape(entry.item);
      let group = groups.get(shape);
      if (group === undefined) groups.set(shape, (group = []));
      group.push(entry);
    }
    for (const group of groups.values()) void settle(group);
  };

  const add = (part: Part<I, O>): void => {
    const identity = options.identity(part.item);
    const slot = active.get(identity);
    if (slot === undefined) {
      const entry: Entry<I, O> = { item: part.item, parts: [part] };
      active.set(identity, { entry, inFlight: false, held: [] });
      if (pending.length === 0) setImmediate(flush);
      pending.push(entry);
      return;
    }
    if (!slot.inFlight && slot.held.length === 0 && options.compose !== undefined) {
      const composed = options.compose(slot.entry.item, part.item);
      if (composed !== undefined) {
        slot.entry.item = composed;
        slot.entry.parts.push(part);
        return;
      }
    }
    slot.held.push(part);
  };

  return (item) => new Promise<O>((resolve, reject) => add({ item, resolve, reject }));
}

/** The patch without its undefined fields, which mean "leave as is". */
export function definedOnly<T extends object>(patch: T): Partial<T> {
  return Object.fromEntries(Object.entries(patch).filter(([, value]) => value !== undefined)) as Partial<T>;
}

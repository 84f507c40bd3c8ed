import { Migration } from '@mikro-orm/migrations';

export class Migration20261123103027_initial extends Migration {

  override name = 'Migration20261123103027_initial';

  override up(): void | Promise<void> {
    this.addSql(`create table "jobs" ("id" uuid not null, "space" text not null, "name" text not null, "script" text not null, "env" jsonb not null, "requested_pool_id" uuid null, "run_id" text not null, "required_labels" text[] not null, "priority" int not null, "exclusive" boolean not null, "timeout_ms" bigint null, "queue_timeout_ms" bigint null, "max_attempts" int not null, "state" text not null, "attempt" int not null, "worker_id" uuid null, "exit_code" int null, "failure_reason" text null, "message" text not null, "resolved_pool_id" uuid null, "pool_rule" text null, "pool_reason" text not null, "worker_reason" text not null, "builtin_worker" boolean not null, "created_at" timestamptz not null, "started_at" timestamptz null, "ended_at" timestamptz null, "queue_deadline" timestamptz null, primary key ("id"));`);
    this.addSql(`create index "jobs_queue_index" on "jobs" ("resolved_pool_id", "priority" DESC, "created_at", "id") where "state" = 'queued';`);
    this.addSql(`create index "jobs_queue_deadline_index" on "jobs" ("queue_deadline") where "state" = 'queued';`);
    this.addSql(`create index "jobs_space_created_at_index" on "jobs" ("space", "created_at", "id");`);
    this.addSql(`alter table "jobs" add constraint "jobs_state_check" check ("state" in ('queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out'));`);
    this.addSql(`alter table "jobs" add constraint "jobs_failure_reason_check" check ("failure_reason" in ('exit_code', 'no_healthy_worker', 'builtin_worker_disabled', 'worker_lost', 'spawn_failed', 'signaled'));`);
    this.addSql(`alter table "jobs" add constraint "jobs_pool_rule_check" check ("pool_rule" in ('explicit', 'space_default', 'target_default'));`);

    this.addSql(`create table "job_attempts" ("job_id" uuid not null, "attempt" int not null, "worker_id" uuid not null, "state" text not null, "assigned_at" timestamptz not null, "accepted_at" timestamptz null, "ended_at" timestamptz null, "outcome" text null, "exit_code" int null, "last_seq" int not null, primary key ("job_id", "attempt"));`);
    this.addSql(`create index "job_attempts_live_index" on "job_attempts" ("worker_id") where state <> 'ended';`);
    this.addSql(`alter table "job_attempts" add constraint "job_attempts_state_check" check ("state" in ('assigned', 'running', 'ended'));`);

    this.addSql(`create table "log_chunks" ("job_id" uuid not null, "attempt" int not null, "seq" int not null, "stream" text not null, "data" bytea not null, "time" timestamptz not null, primary key ("job_id", "attempt", "seq"));`);
    this.addSql(`alter table "log_chunks" add constraint "log_chunks_stream_check" check ("stream" in ('stdout', 'stderr', 'system'));`);

    this.addSql(`create table "spaces" ("name" text not null, "created_at" timestamptz not null, primary key ("name"));`);

    this.addSql(`create table "worker_pools" ("id" uuid not null, "space" text not null, "name" text not null, "description" text not null, "is_default" boolean not null, "created_at" timestamptz not null, "updated_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`alter table "worker_pools" add constraint "worker_pools_space_name_unique" unique ("space", "name");`);
    this.addSql(`create unique index "worker_pools_one_default_per_space" on "worker_pools" ("space") where "is_default" = true;`);

    this.addSql(`create table "workers" ("id" uuid not null, "space" text not null, "pool_id" uuid not null, "name" text not null, "labels" text[] not null, "capacity" int not null, "state" text not null, "credential_hash" text not null, "hostname" text not null, "agent_version" text not null, "created_at" timestamptz not null, "last_seen_at" timestamptz null, primary key ("id"));`);
    this.addSql(`alter table "workers" add constraint "workers_credential_hash_unique" unique ("credential_hash");`);
    this.addSql(`create index "workers_pool_id_index" on "workers" ("pool_id");`);
    this.addSql(`create index "workers_space_created_at_index" on "workers" ("space", "created_at");`);
    this.addSql(`alter table "workers" add constraint "workers_state_check" check ("state" in ('enabled', 'disabled', 'draining'));`);

    this.addSql(`create table "registration_tokens" ("id" uuid not null, "pool_id" uuid not null, "description" text not null, "secret_hash" text not null, "prefix" text not null, "created_at" timestamptz not null, "expires_at" timestamptz null, "last_used_at" timestamptz null, "revoked_at" timestamptz null, primary key ("id"));`);
    this.addSql(`alter table "registration_tokens" add constraint "registration_tokens_secret_hash_unique" unique ("secret_hash");`);
    this.addSql(`create index "registration_tokens_pool_id_index" on "registration_tokens" ("pool_id");`);

    this.addSql(`alter table "job_attempts" add constraint "job_attempts_job_id_foreign" foreign key ("job_id") references "jobs" ("id") on delete cascade;`);

    this.addSql(`alter table "worker_pools" add constraint "worker_pools_space_foreign" foreign key ("space") references "spaces" ("name");`);

    this.addSql(`alter table "workers" add constraint "workers_pool_id_foreign" foreign key ("pool_id") references "worker_pools" ("id") on delete cascade;`);

    this.addSql(`alter table "registration_tokens" add constraint "registration_tokens_pool_id_foreign" foreign key ("pool_id") references "worker_pools" ("id") on delete cascade;`);
  }

}

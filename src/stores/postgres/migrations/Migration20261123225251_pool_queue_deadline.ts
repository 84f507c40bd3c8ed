import { Migration } from '@mikro-orm/migrations';

export class Migration20261123225251_pool_queue_deadline extends Migration {

  override name = 'Migration20261123225251_pool_queue_deadline';

  override up(): void | Promise<void> {
    this.addSql(`create index "jobs_pool_queue_deadline_index" on "jobs" ("resolved_pool_id", (coalesce("queue_deadline", '-infinity'::timestamptz))) where "state" = 'queued';`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop index "jobs_pool_queue_deadline_index";`);
  }

}

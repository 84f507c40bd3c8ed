import { Migration } from '@mikro-orm/migrations';

export class Migration20261123104012_targets extends Migration {

  override name = 'Migration20261123104012_targets';

  override up(): void | Promise<void> {
    this.addSql(`create table "targets" ("id" uuid not null, "space" text not null, "name" text not null, "description" text not null, "default_pool_id" uuid null, "created_at" timestamptz not null, "updated_at" timestamptz not null, primary key ("id"));`);
    this.addSql(`create index "targets_default_pool_id_index" on "targets" ("default_pool_id");`);
    this.addSql(`alter table "targets" add constraint "targets_space_name_unique" unique ("space", "name");`);

    this.addSql(`alter table "jobs" add "target_id" uuid null;`);

    this.addSql(`alter table "targets" add constraint "targets_space_foreign" foreign key ("space") references "spaces" ("name");`);
    this.addSql(`alter table "targets" add constraint "targets_default_pool_id_foreign" foreign key ("default_pool_id") references "worker_pools" ("id") on delete restrict;`);
  }

  override down(): void | Promise<void> {
    this.addSql(`drop table if exists "targets" cascade;`);

    this.addSql(`alter table "jobs" drop column "target_id";`);
  }

}

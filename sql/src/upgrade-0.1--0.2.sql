--
-- From 0.1: what changes shape, and what 0.2 no longer has (the rest is replaced by the same sources as a fresh
-- install's)
--

-- loop_status() gains lock_holder; the view over it follows
DROP VIEW certctl_sched.loops;
DROP FUNCTION certctl_sched.loop_status();

-- the run cursor is now passed to the bodies explicitly, instead of through a session setting
DROP FUNCTION certctl_sched._run_cursor(text);
DROP FUNCTION certctl_sched._run_cursor_advance(text, text);
-- the bodies' prologue is no longer variadic
DROP FUNCTION certctl_sched._certctl_schema_checked(timestamptz, integer, text[]);

-- rows a run could not process
ALTER TABLE certctl_sched.run_history ADD COLUMN skipped bigint NOT NULL DEFAULT 0;

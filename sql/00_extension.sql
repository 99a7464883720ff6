-- 00_extension: creates the extension, which every later test assumes
CREATE EXTENSION certctl_sched;
SELECT extname, extversion, extnamespace::regnamespace FROM pg_extension WHERE extname = 'certctl_sched';

# certctl_sched: certctl's scheduler loops as PostgreSQL background workers (PGXS build)

EXTENSION = certctl_sched
MODULE_big = certctl_sched
OBJS = src/init.o src/shmem.o src/worker.o src/run.o src/funcs.o
PGFILEDESC = "certctl_sched - certctl's scheduler loops as background workers"

DATA = $(wildcard sql/certctl_sched--*.sql)

# pg_regress: every sql/<test>.sql with expected/<test>.out, on a private instance with the library preloaded
REGRESS = $(sort $(patsubst sql/%.sql,%,$(filter-out sql/certctl_sched--%,$(wildcard sql/*.sql))))
REGRESS_OPTS = --temp-instance=tmp_check_regress --temp-config=test/regress.conf

# isolation specs live in test/specs, their expected output in expected/
ISOLATION = $(sort $(notdir $(basename $(wildcard test/specs/*.spec))))
ISOLATION_OPTS = --temp-instance=tmp_check_iso --temp-config=test/regress.conf --inputdir=test --outputdir=.

TAP_TESTS = 1
PROVE_TESTS = $(sort $(wildcard test/t/*.pl))

EXTRA_CLEAN = results output_iso tmp_check tmp_check_regress tmp_check_iso regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# NVMe tier bench against fio.  bench_nvme.c also goes into kvtier-bench (--nvme); this
# standalone binary lets the tier be measured on its own.
add_executable(kvtier-bench-nvme ${CMAKE_CURRENT_SOURCE_DIR}/bench_nvme.c
	${CMAKE_CURRENT_SOURCE_DIR}/nvme_bench_main.c)
target_link_libraries(kvtier-bench-nvme PRIVATE kvt_tiers)

# Smoke run: every path of the bench (io_uring, pread workers, recovery of every record) must
# complete without error; it does not judge speed (a shared machine is too noisy for that).
kvt_add_test(kvtier_bench_nvme_quick COMMAND $<TARGET_FILE:kvtier-bench-nvme> --quick --no-fio
	LABELS slow TIMEOUT 300)

# NVMe tier bench against fio.  bench_nvme.c also goes into kvtier-bench (--nvme); this
# standalone binary lets the tier be measured on its own.
add_executable(kvtier-bench-nvme ${CMAKE_CURRENT_SOURCE_DIR}/bench_nvme.c
	${CMAKE_CURRENT_SOURCE_DIR}/nvme_bench_main.c)
target_link_libraries(kvtier-bench-nvme PRIVATE kvt_tiers)

# kvtier-bench: host-tier put/get/lookup against memcpy and Redis in the same run (DESIGN §9).
if(TARGET kvtier AND HIREDIS_FOUND)
	add_executable(kvtier-bench ${CMAKE_CURRENT_SOURCE_DIR}/kvtier_bench.c)
	target_include_directories(kvtier-bench PRIVATE ${PROJECT_SOURCE_DIR}/client)
	target_link_libraries(kvtier-bench PRIVATE kvtier PkgConfig::HIREDIS Threads::Threads m)
	if(TARGET kvtierd)
		# The daemon this build made is the default one to start.
		target_compile_definitions(kvtier-bench PRIVATE KVT_DAEMON_PATH="$<TARGET_FILE:kvtierd>")
	endif()
	# The NVMe tier benchmark (bench_nvme.c, another module) is reached by `kvtier-bench --nvme`.
	if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/bench_nvme.c)
		target_sources(kvtier-bench PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/bench_nvme.c)
		target_compile_definitions(kvtier-bench PRIVATE KVT_HAVE_BENCH_NVME)
		foreach(lib kvt_tiers kvt_codecs kvt_proto PkgConfig::URING)
			if(TARGET ${lib})
				target_link_libraries(kvtier-bench PRIVATE ${lib})
			endif()
		endforeach()
	endif()
	# The remote tier benchmark (bench_remote.c) is reached by `kvtier-bench --remote`; it
	# starts its cluster with the tests' redis harness.
	if(TARGET kvt_tier_remote)
		target_sources(kvtier-bench PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/bench_remote.c
			${PROJECT_SOURCE_DIR}/tests/integration/redis_harness.c)
		target_include_directories(kvtier-bench PRIVATE ${PROJECT_SOURCE_DIR}/tests/integration)
		target_compile_definitions(kvtier-bench PRIVATE KVT_HAVE_BENCH_REMOTE)
		target_link_libraries(kvtier-bench PRIVATE kvt_tier_remote)
		kvt_add_test(kvtier_bench_remote_quick
			COMMAND $<TARGET_FILE:kvtier-bench> --remote --quick --json
			LABELS remote slow TIMEOUT 300)
	endif()
	install(TARGETS kvtier-bench RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

	# Smoke run: every size, both data paths verified byte for byte; it fails on any error,
	# not on speed (a shared CI machine is too noisy for the §9 ratios; use --check by hand).
	if(TARGET kvtierd)
		kvt_add_test(kvtier_bench_quick
			COMMAND $<TARGET_FILE:kvtier-bench> --quick --daemon $<TARGET_FILE:kvtierd>
			LABELS slow TIMEOUT 300)
	endif()
endif()

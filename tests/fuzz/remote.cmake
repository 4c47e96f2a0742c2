# The remote tier's value parser (tiers/tier_remote.c) under fuzzing: raw values and RESP
# streams through hiredis's reader.  Always a replay driver over the committed corpus
# tests/fuzz/corpus/remote_value (seeds: KVT_FUZZ_MAKE_SEEDS in fuzz_remote_value.c); a
# libFuzzer binary with KVT_FUZZ=ON and clang, the parser compiled in for coverage.
if(TARGET kvt_tier_remote)
	add_executable(fuzz_remote_value_replay ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_remote_value.c
		${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.c)
	target_link_libraries(fuzz_remote_value_replay PRIVATE kvt_tier_remote)
	kvt_add_test(fuzz_remote_value_replay
		COMMAND $<TARGET_FILE:fuzz_remote_value_replay>
			${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/remote_value
		LABELS fast remote)
	if(KVT_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
		add_executable(fuzz_remote_value ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_remote_value.c
			${PROJECT_SOURCE_DIR}/tiers/tier_remote.c ${PROJECT_SOURCE_DIR}/tiers/redis_cluster.c
			${PROJECT_SOURCE_DIR}/tiers/redis_conn.c
			${PROJECT_SOURCE_DIR}/proto/kvt_record.c)
		target_include_directories(fuzz_remote_value PRIVATE ${PROJECT_SOURCE_DIR}/proto
			${PROJECT_SOURCE_DIR}/tiers)
		target_link_libraries(fuzz_remote_value PRIVATE PkgConfig::HIREDIS)
		target_compile_options(fuzz_remote_value PRIVATE -fsanitize=fuzzer,address,undefined)
		target_link_options(fuzz_remote_value PRIVATE -fsanitize=fuzzer,address,undefined)
	endif()
endif()

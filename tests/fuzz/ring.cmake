# Ring-entry fuzzing: an in-process kvtierd (its loop on a thread) fed forged submission
# entries by a hand-made client, with pinned canary blocks of a good client checked after
# every input.  Always built as a corpus replay for ctest; a libFuzzer target with KVT_FUZZ.
add_executable(fuzz_ring_replay ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_ring.c
	${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.c)
target_link_libraries(fuzz_ring_replay PRIVATE kvtd_core kvtier)
kvt_add_test(fuzz_ring_replay
	COMMAND $<TARGET_FILE:fuzz_ring_replay> ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/ring
	LABELS fast reliability)
if(KVT_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
	add_executable(fuzz_ring ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_ring.c)
	target_link_libraries(fuzz_ring PRIVATE kvtd_core kvtier)
	target_compile_options(fuzz_ring PRIVATE -fsanitize=fuzzer,address,undefined)
	target_link_options(fuzz_ring PRIVATE -fsanitize=fuzzer,address,undefined)
endif()

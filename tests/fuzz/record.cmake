# Record parser fuzzing: a libFuzzer target when KVT_FUZZ is on (clang), and always a replay
# driver that runs the committed corpus under ctest.
add_executable(fuzz_record_replay ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_record.c
	${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.c)
target_link_libraries(fuzz_record_replay PRIVATE kvt_proto)
kvt_add_test(fuzz_record_replay
	COMMAND $<TARGET_FILE:fuzz_record_replay> ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/record
	LABELS fast)

if(KVT_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
	# The parser is compiled into the target so that libFuzzer's coverage sees it.
	add_executable(fuzz_record ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_record.c
		${PROJECT_SOURCE_DIR}/proto/kvt_record.c)
	target_include_directories(fuzz_record PRIVATE ${PROJECT_SOURCE_DIR}/proto)
	target_compile_options(fuzz_record PRIVATE -fsanitize=fuzzer,address,undefined)
	target_link_options(fuzz_record PRIVATE -fsanitize=fuzzer,address,undefined)
endif()

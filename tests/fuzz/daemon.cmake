# Fuzzing the daemon itself: an in-process kvtierd (inproc.c, its loop on a thread) attacked
# through a hand-made client, with pinned canary blocks of a good client checked after every
# input.  fuzz_ring writes forged submission entries into the ring; fuzz_ctl sends forged
# control messages.  Always built as corpus replays for ctest; libFuzzer targets with KVT_FUZZ.
foreach(t ring ctl)
	add_executable(fuzz_${t}_replay ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_${t}.c
		${PROJECT_SOURCE_DIR}/tests/fuzz/inproc.c ${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.c)
	target_link_libraries(fuzz_${t}_replay PRIVATE kvtd_core kvtier)
	kvt_add_test(fuzz_${t}_replay
		COMMAND $<TARGET_FILE:fuzz_${t}_replay> ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/${t}
		LABELS fast reliability)
	if(KVT_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
		add_executable(fuzz_${t} ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_${t}.c
			${PROJECT_SOURCE_DIR}/tests/fuzz/inproc.c)
		target_link_libraries(fuzz_${t} PRIVATE kvtd_core kvtier)
		target_compile_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined)
		target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined)
	endif()
endforeach()

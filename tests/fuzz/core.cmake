# Fuzz targets of the foundation: control messages (with layouts and key chains) and the
# configuration parser.  Always built as corpus replays for ctest; as libFuzzer targets
# with KVT_FUZZ=ON and clang.
foreach(t msg config)
	add_executable(fuzz_${t}_replay ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_${t}.c
		${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.c)
	target_compile_definitions(fuzz_${t}_replay PRIVATE _GNU_SOURCE)
	kvt_add_test(fuzz_${t}_replay
		COMMAND $<TARGET_FILE:fuzz_${t}_replay> ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/${t}
		LABELS fast reliability)
	if(KVT_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
		add_executable(fuzz_${t} ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_${t}.c)
		target_compile_definitions(fuzz_${t} PRIVATE _GNU_SOURCE)
		target_compile_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined)
		target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer,address,undefined)
	endif()
endforeach()
target_link_libraries(fuzz_msg_replay PRIVATE kvt_proto)
target_link_libraries(fuzz_config_replay PRIVATE kvtd_core)
# The code under test is compiled into the fuzz targets, so that libFuzzer's coverage
# instrumentation sees it (a prebuilt library would leave it blind).
if(TARGET fuzz_msg)
	target_sources(fuzz_msg PRIVATE ${PROJECT_SOURCE_DIR}/proto/kvt_proto.c)
	target_include_directories(fuzz_msg PRIVATE ${PROJECT_SOURCE_DIR}/proto ${PROJECT_SOURCE_DIR}/client)
	target_compile_definitions(fuzz_msg PRIVATE KVT_BUILDING_LIB)
	target_link_libraries(fuzz_msg PRIVATE PkgConfig::XXHASH)
	target_sources(fuzz_config PRIVATE ${PROJECT_SOURCE_DIR}/daemon/config.c
		${PROJECT_SOURCE_DIR}/proto/kvt_proto.c)
	target_include_directories(fuzz_config PRIVATE ${PROJECT_SOURCE_DIR}/daemon
		${PROJECT_SOURCE_DIR}/proto ${PROJECT_SOURCE_DIR}/client)
	target_compile_definitions(fuzz_config PRIVATE KVT_BUILDING_LIB)
	target_link_libraries(fuzz_config PRIVATE PkgConfig::INIH PkgConfig::XXHASH)
endif()

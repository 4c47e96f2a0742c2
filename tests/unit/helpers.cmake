# The shared helper layer in proto/: the worker pool (kvt_pool) and the fp16/bf16 conversion
# (kvt_half.h).
if(CMOCKA_FOUND)
	foreach(t pool half)
		add_executable(test_${t} ${PROJECT_SOURCE_DIR}/tests/unit/test_${t}.c)
		target_link_libraries(test_${t} PRIVATE kvt_proto PkgConfig::CMOCKA Threads::Threads m)
		target_compile_definitions(test_${t} PRIVATE _GNU_SOURCE)
		kvt_add_test(unit_${t} COMMAND $<TARGET_FILE:test_${t}> LABELS fast)
	endforeach()
endif()

# gpu/ tests: test_gpu_ref runs anywhere (host half of the module and the stub's answers);
# test_gpu needs a device and exits 77 without one.
if(CMOCKA_FOUND AND TARGET kvt_gpu)
	add_executable(test_gpu_ref ${PROJECT_SOURCE_DIR}/tests/unit/test_gpu_ref.c)
	target_link_libraries(test_gpu_ref PRIVATE kvt_gpu PkgConfig::CMOCKA m)
	kvt_add_test(test_gpu_ref COMMAND $<TARGET_FILE:test_gpu_ref> LABELS fast)

	add_executable(test_gpu ${PROJECT_SOURCE_DIR}/tests/unit/test_gpu.c)
	target_link_libraries(test_gpu PRIVATE kvt_gpu PkgConfig::CMOCKA m)
	kvt_add_test(test_gpu COMMAND $<TARGET_FILE:test_gpu> LABELS gpu TIMEOUT 600)
endif()

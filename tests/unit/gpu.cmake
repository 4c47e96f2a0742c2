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

# gpu_xpose.cu's kernel and launch loop on the CPU (gpu/emu/xpose_emu.cpp) against a
# transposition written from the layout ABI: seconds.  Not in the sanitizer build (the
# emulation links gpu/'s library without the sanitizers' runtime).
find_program(KVT_GXX NAMES g++)
if(NOT KVT_SANITIZE AND KVT_GXX AND TARGET kvt_gpu)
	kvt_add_test(gpu_xpose_emu
		COMMAND sh ${PROJECT_SOURCE_DIR}/gpu/emu/run_emu.sh ${CMAKE_BINARY_DIR} xpose
		LABELS fast TIMEOUT 300)
endif()

# The bq codec: AVX2 == scalar reference on real excerpts and edge cases, error bound, corrupt
# records refused (CPU); its CUDA kernels byte for byte against the reference (gpu label, exit
# 77 without a device).
if(CMOCKA_FOUND AND TARGET kvt_codecs)
	add_executable(test_codec_bq ${PROJECT_SOURCE_DIR}/tests/unit/test_codec_bq.c)
	target_link_libraries(test_codec_bq PRIVATE kvt_codecs kvt_kvd PkgConfig::CMOCKA m)
	target_include_directories(test_codec_bq PRIVATE ${PROJECT_SOURCE_DIR}/codecs)
	kvt_add_test(test_codec_bq COMMAND $<TARGET_FILE:test_codec_bq> LABELS fast codec)
endif()
if(CMOCKA_FOUND AND TARGET kvt_gpu AND TARGET kvt_codecs)
	add_executable(test_gpu_bq ${PROJECT_SOURCE_DIR}/tests/unit/test_gpu_bq.c)
	target_link_libraries(test_gpu_bq PRIVATE kvt_gpu kvt_codecs kvt_kvd PkgConfig::CMOCKA m)
	target_include_directories(test_gpu_bq PRIVATE ${PROJECT_SOURCE_DIR}/codecs)
	kvt_add_test(test_gpu_bq COMMAND $<TARGET_FILE:test_gpu_bq> LABELS gpu TIMEOUT 600)
endif()
# kvtier-eval codec marks the chains a GPU decodes ("gpu": true) and reports memcpy beside them;
# --pareto keeps bq on the GPU chains' frontier although uq beats it on both ratio and err.
if(TARGET kvtier-eval AND TARGET kvt_codecs)
	kvt_add_test(eval_codec_bq_gpu_mark
		COMMAND $<TARGET_FILE:kvtier-eval> codec --codec fpx --codec bq --codec uq --pareto
			--json --quiet ${PROJECT_SOURCE_DIR}/tests/data/sympy_l1h0_q128.kvd
		LABELS fast codec)
	set_tests_properties(eval_codec_bq_gpu_mark PROPERTIES PASS_REGULAR_EXPRESSION
		"\"codec\": \"fpx\"[^\n]*\"memcpy_gbps\": [0-9.]+, \"lossless\": true, \"gpu\": false[^\n]*\n[^\n]*\"codec\": \"bq\"[^\n]*\"gpu\": true")
endif()
# The CUDA kernels' source on the CPU (gpu/emu: host threads for a warp's lanes and a CTA's
# threads) against the CPU codec, so that a kernel change is checked where no GPU is: every
# decoder path, damaged records, the encoder byte for byte.  Not in the sanitizer build (the
# emulation links the libraries without the sanitizers' runtime).
find_program(KVT_GXX NAMES g++)
if(NOT KVT_SANITIZE AND KVT_GXX AND TARGET kvt_codecs AND TARGET kvt_kvd)
	kvt_add_test(gpu_bq_emu
		COMMAND sh ${PROJECT_SOURCE_DIR}/gpu/emu/run_emu.sh ${CMAKE_BINARY_DIR}
		LABELS codec TIMEOUT 1200)
endif()

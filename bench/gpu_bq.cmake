# kvtier-gpu-bq-bench: the bq codec's CUDA encoder/decoder against a device-to-device copy of
# the same bytes in the same run (needs CUDA; JSON out).  Command: codecs/CODECS.md, "bq".
if(KVT_HAVE_CUDA AND TARGET kvt_gpu AND TARGET kvt_codecs AND TARGET kvt_kvd)
	add_executable(kvtier-gpu-bq-bench ${CMAKE_CURRENT_SOURCE_DIR}/gpu_bq_bench.cu)
	set_property(TARGET kvtier-gpu-bq-bench PROPERTY COMPILE_OPTIONS "")
	set_target_properties(kvtier-gpu-bq-bench PROPERTIES CUDA_ARCHITECTURES 90 CUDA_STANDARD 17
		CUDA_STANDARD_REQUIRED ON)
	target_compile_options(kvtier-gpu-bq-bench PRIVATE
		-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter,-Wno-missing-field-initializers)
	target_link_libraries(kvtier-gpu-bq-bench PRIVATE kvt_gpu kvt_codecs kvt_kvd CUDA::cudart)
endif()

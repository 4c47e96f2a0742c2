# Codec decoders under fuzzing: one target per decoder (the chain is compiled in), a libFuzzer
# binary when KVT_FUZZ is on (clang), and always a replay driver that runs the committed
# corpus tests/fuzz/corpus/codec_TAG/ under ctest (ASan in the sanitizer build).
# Seeds: see KVT_FUZZ_MAKE_SEEDS in fuzz_codec_decode.c.
if(TARGET kvt_codecs)
	set(_kvt_codec_fuzz
		"lz4|lz4" "zstd|zstd:1" "shuffle_rans|shuffle+rans" "fpx|fpx" "kivi|kivi"
		"kivi_rans|kivi:rot=1,sink=2,outl=0.02+rans" "fp8|fp8" "uq|uq:sink=2"
		"uq_dq|uq:dq=0.4,sink=2,kl=0:1" "uq_kb|uq:kb=1,cx=1,dq=0.4,sink=2"
		"lowrank|lowrank:r=4,b=4" "lsh|lsh" "bq|bq:sink=2"
		"bq_rope|bq:sink=2,rope=10000")
	foreach(pair ${_kvt_codec_fuzz})
		string(REPLACE "|" ";" parts "${pair}")
		list(GET parts 0 tag)
		list(GET parts 1 spec)
		add_executable(fuzz_codec_${tag}_replay ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_codec_decode.c
			${PROJECT_SOURCE_DIR}/tests/fuzz/replay_main.c)
		target_compile_definitions(fuzz_codec_${tag}_replay PRIVATE KVT_FUZZ_CHAIN="${spec}")
		target_link_libraries(fuzz_codec_${tag}_replay PRIVATE kvt_codecs)
		kvt_add_test(fuzz_codec_${tag}_replay
			COMMAND $<TARGET_FILE:fuzz_codec_${tag}_replay>
				${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/codec_${tag}
			LABELS fast)
		if(KVT_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
			add_executable(fuzz_codec_${tag} ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_codec_decode.c)
			target_compile_definitions(fuzz_codec_${tag} PRIVATE KVT_FUZZ_CHAIN="${spec}")
			target_link_libraries(fuzz_codec_${tag} PRIVATE kvt_codecs)
			target_compile_options(fuzz_codec_${tag} PRIVATE -fsanitize=fuzzer,address,undefined)
			target_link_options(fuzz_codec_${tag} PRIVATE -fsanitize=fuzzer,address,undefined)
		endif()
	endforeach()
endif()

# Codec tests (codecs/): round trips on random and real data, chain framing and corrupt input,
# SIMD == scalar and the rANS coder.
if(CMOCKA_FOUND AND TARGET kvt_codecs)
	foreach(t roundtrip chain simd)
		add_executable(test_codec_${t} ${PROJECT_SOURCE_DIR}/tests/unit/test_codec_${t}.c)
		target_link_libraries(test_codec_${t} PRIVATE kvt_codecs kvt_kvd PkgConfig::CMOCKA m)
		target_include_directories(test_codec_${t} PRIVATE ${PROJECT_SOURCE_DIR}/codecs)
		kvt_add_test(test_codec_${t} COMMAND $<TARGET_FILE:test_codec_${t}> LABELS fast)
	endforeach()
endif()

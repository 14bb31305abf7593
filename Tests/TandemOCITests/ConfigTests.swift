import Testing
@testable import TandemOCI

@Suite struct ConfigParsingTests {
    let tenancy = Fixtures.tenancy
    let user = Fixtures.user
    let fp = Fixtures.testKeyFingerprint

    var basic: String {
        """
        [DEFAULT]
        user=\(user)
        fingerprint=\(fp)
        key_file=~/.oci/oci_api_key.pem
        tenancy=\(tenancy)
        region=us-ashburn-1

        [LB]
        user = ocid1.user.oc1..other
        key_file : /etc/lb/oci_lb_key.pem
        pass_phrase=secret
        """
    }

    @Test func defaultProfileAndTildeExpansion() throws {
        let files = MemoryFiles()
        files.put("/home/opc/.oci/config", basic)
        let config = try OCIConfig.load(environment: files.environment())
        #expect(config.profile == "DEFAULT")
        #expect(config.path == "/home/opc/.oci/config")
        #expect(config.keyFile == "/home/opc/.oci/oci_api_key.pem")
        #expect(config.region == "us-ashburn-1")
        #expect(config.keyId == "\(tenancy)/\(user)/\(fp)")
        #expect(config.passPhrase == nil)
    }

    @Test func profileInheritsDefaultAndOverrides() throws {
        let files = MemoryFiles()
        files.put("/home/opc/.oci/config", basic)
        let config = try OCIConfig.load(profile: "LB", environment: files.environment())
        #expect(config.user == "ocid1.user.oc1..other")
        #expect(config.tenancy == tenancy)          // inherited
        #expect(config.fingerprint == fp)           // inherited
        #expect(config.keyFile == "/etc/lb/oci_lb_key.pem")  // ':' delimiter
        #expect(config.passPhrase == "secret")
        #expect(config.region == "us-ashburn-1")
    }

    @Test func sectionNamesAreCaseSensitiveOptionNamesAreNot() throws {
        let text = """
        [LB]
        USER=\(user)
        Fingerprint=\(fp)
        KEY_FILE=/k.pem
        tenancy=\(tenancy)
        """
        let file = try OCIConfigFile.parse(text)
        #expect(file.profile("lb") == nil)
        #expect(file.profile("LB")?["key_file"] == "/k.pem")
        let files = MemoryFiles()
        files.put("/c", text)
        #expect(throws: OCIConfigError.profileNotFound(profile: "lb", path: "/c", available: ["LB"])) {
            try OCIConfig.load(path: "/c", profile: "lb", environment: files.environment())
        }
    }

    @Test func commentsAreWholeLineOnly() throws {
        let file = try OCIConfigFile.parse("""
        # comment
        ; other comment
        [DEFAULT]
          # indented comment
        region=us-ashburn-1   # not a comment
        """)
        #expect(file.defaults["region"] == "us-ashburn-1   # not a comment")
        #expect(file.defaults.count == 1)
    }

    @Test func firstDelimiterWinsAndValuesKeepEqualsAndPercent() throws {
        let file = try OCIConfigFile.parse("[DEFAULT]\npass_phrase = a=b:c%d\nx:y=z\nempty=\n")
        #expect(file.defaults["pass_phrase"] == "a=b:c%d")
        #expect(file.defaults["x"] == "y=z")
        #expect(file.defaults["empty"] == "")
    }

    @Test func continuationLines() throws {
        let file = try OCIConfigFile.parse("[DEFAULT]\nkey=first\n  second\nother=1\n")
        #expect(file.defaults["key"] == "first\nsecond")
        #expect(file.defaults["other"] == "1")
    }

    @Test func duplicatesAreErrors() {
        #expect(throws: OCIConfigError.duplicateSection(path: "<config>", line: 3, section: "A")) {
            try OCIConfigFile.parse("[A]\nx=1\n[A]\n")
        }
        #expect(throws: OCIConfigError.duplicateOption(path: "<config>", line: 3, section: "A", option: "x")) {
            try OCIConfigFile.parse("[A]\nx=1\nX=2\n")
        }
    }

    @Test func malformedLines() {
        #expect(throws: OCIConfigError.malformedLine(path: "<config>", line: 2, text: "just words")) {
            try OCIConfigFile.parse("[A]\njust words\n")
        }
        #expect(throws: OCIConfigError.missingSectionHeader(path: "<config>", line: 1)) {
            try OCIConfigFile.parse("user=x\n")
        }
        #expect(throws: OCIConfigError.malformedLine(path: "<config>", line: 2, text: "=value")) {
            try OCIConfigFile.parse("[A]\n=value\n")
        }
    }

    @Test func missingAndMalformedKeys() throws {
        let files = MemoryFiles()
        files.put("/c", "[DEFAULT]\nuser=\(user)\nfingerprint=\(fp)\ntenancy=\(tenancy)\n")
        #expect(throws: OCIConfigError.missingKey(profile: "DEFAULT", key: "key_file")) {
            try OCIConfig.load(path: "/c", environment: files.environment())
        }
        files.put("/c", "[DEFAULT]\nuser=\(user)\nfingerprint=73:61:A2:21:67:e0:df:be:7e:4b:93:1e:15:98:a5:b7\nkey_file=/k\ntenancy=\(tenancy)\n")
        #expect(throws: OCIConfigError.self) { try OCIConfig.load(path: "/c", environment: files.environment()) }
        files.put("/c", "[DEFAULT]\nuser=bob\nfingerprint=\(fp)\nkey_file=/k\ntenancy=\(tenancy)\n")
        do {
            _ = try OCIConfig.load(path: "/c", environment: files.environment())
            Issue.record("expected an error")
        } catch {
            guard case .malformedValue(_, "user", "bob", _) = error else { Issue.record("\(error)"); return }
            #expect(error.description.contains("'user' = 'bob' is malformed"))
        }
        files.put("/c", "[DEFAULT]\nuser=\(user)\nfingerprint=\(fp)\nkey_file=/k\ntenancy=\(tenancy)\nkey_content=abc\n")
        #expect(throws: OCIConfigError.keyContentInFile(profile: "DEFAULT")) {
            try OCIConfig.load(path: "/c", environment: files.environment())
        }
    }

    @Test func regionFallsBackToOCI_REGIONAndMayBeAbsent() throws {
        // The seed's container config has no region at all.
        let text = "[DEFAULT]\nuser=\(user)\nfingerprint=\(fp)\nkey_file=/root/.oci/oci_api_key.pem\ntenancy=\(tenancy)\n"
        let files = MemoryFiles()
        files.put("/root/.oci/config", text)
        let none = try OCIConfig.load(environment: files.environment(["HOME": "/root"]))
        #expect(none.region == nil)
        let env = try OCIConfig.load(environment: files.environment(["HOME": "/root", "OCI_REGION": "eu-frankfurt-1"]))
        #expect(env.region == "eu-frankfurt-1")
    }

    @Test func lookupOrder() throws {
        let text = "[DEFAULT]\nuser=\(user)\nfingerprint=\(fp)\nkey_file=/k\ntenancy=\(tenancy)\n"
        let files = MemoryFiles()
        let env = ["HOME": "/h", "OCI_CONFIG_FILE": "~/custom"]
        files.put("/h/.oraclebmc/config", text)
        #expect(try OCIConfig.load(environment: files.environment(env)).path == "/h/.oraclebmc/config")
        files.put("/h/custom", text)
        #expect(try OCIConfig.load(environment: files.environment(env)).path == "/h/custom")
        files.put("/h/.oci/config", text)
        #expect(try OCIConfig.load(environment: files.environment(env)).path == "/h/.oci/config")
        // An explicit path wins, and must exist.
        #expect(throws: OCIConfigError.fileNotFound(searched: ["/nope"])) {
            try OCIConfig.load(path: "/nope", environment: files.environment(env))
        }
        #expect(throws: OCIConfigError.fileNotFound(searched: ["/e/.oci/config", "/e/.oraclebmc/config"])) {
            try OCIConfig.load(environment: files.environment(["HOME": "/e"]))
        }
    }

    @Test func missingDefaultProfileIsReported() throws {
        let files = MemoryFiles()
        files.put("/c", "[LB]\nuser=\(user)\n")
        #expect(throws: OCIConfigError.profileNotFound(profile: "DEFAULT", path: "/c", available: ["LB"])) {
            try OCIConfig.load(path: "/c", environment: files.environment())
        }
    }

    @Test func crlfLineEndings() throws {
        let file = try OCIConfigFile.parse("[DEFAULT]\r\nregion=us-ashburn-1\r\n")
        #expect(file.defaults["region"] == "us-ashburn-1")
    }
}

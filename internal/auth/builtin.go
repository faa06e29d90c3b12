package auth

import "strings"

func allow(actions ...string) Statement {
	return Statement{Effect: "Allow", Action: actions, Resource: []string{"*"}}
}

var (
	controllerPolicy = Document{Version: PolicyVersion, Statement: []Statement{
		allow("volume:CreateVolume", "volume:DescribeVolume", "volume:ListVolumes", "volume:DeleteVolume",
			"volume:AttachVolume", "volume:DetachVolume", "volume:ResizeVolume", "volume:ModifyVolume",
			"snapshot:*", "pool:ListPools", "node:ListNodes", "filesystem:*"),
		// Spelled out so that an attached policy allowing secrets to the
		// controller still cannot make it read them.
		{Effect: "Deny", Action: []string{"secretsmanager:*", "ssm:*", "kms:Decrypt", "kms:GetVolumeDataKey", "volume:GetAttachmentSecret"}, Resource: []string{"*"}},
	}}
	nodePolicy = Document{Version: PolicyVersion, Statement: []Statement{
		// GetVolumeDataKey, GetAttachmentSecret: the handler checks that the
		// volume is attached to the principal's own node.
		allow("node:RegisterNode", "volume:DescribeVolume", "volume:ListVolumes", "kms:GetVolumeDataKey", "volume:GetAttachmentSecret",
			"filesystem:DescribeFileSystem", "filesystem:DescribeAccessPoint", "filesystem:ListAccessPoints"),
	}}
	fileDriverPolicy = Document{Version: PolicyVersion, Statement: []Statement{
		allow("filesystem:*", "pool:ListPools", "node:RegisterNode", "node:ListNodes"),
		{Effect: "Deny", Action: []string{"secretsmanager:*", "ssm:*", "kms:Decrypt", "kms:GetVolumeDataKey", "volume:GetAttachmentSecret"}, Resource: []string{"*"}},
	}}
	// A storage host registers its own pool and gets its own agent token
	// (the handlers check the pool is the principal's).
	storageHostPolicy = Document{Version: PolicyVersion, Statement: []Statement{allow("pool:RegisterStorageHost", "pool:DeregisterStorageHost", "pool:GetStorageHostAgentToken")}}
	// The provider reads nothing for itself: BatchGetValues authorises each
	// object for the pod whose token it forwards.
	providerPolicy = Document{Version: PolicyVersion, Statement: []Statement{allow("secretsmanager:BatchGetValues")}}
	// The KMS plugin's key is given to the plugin, not the server, so the
	// resource is any key; Decrypt names no key in its request.
	kmsPluginPolicy = Document{Version: PolicyVersion, Statement: []Statement{allow("kms:Encrypt", "kms:Decrypt", "kms:DescribeKey")}}
	adminPolicy     = Document{Version: PolicyVersion, Statement: []Statement{allow("*")}}
)

// BuiltinPolicy is the policy a principal has without any attached one.
func BuiltinPolicy(p Principal) (Document, bool) {
	switch {
	case p.Kind == Admin:
		return adminPolicy, true
	case p.Kind != Component:
	case p.Name == CSIController:
		return controllerPolicy, true
	case strings.HasPrefix(p.Name, CSINodePrefix):
		return nodePolicy, true
	case p.Name == CSIFile:
		return fileDriverPolicy, true
	case strings.HasPrefix(p.Name, StorageHostPrefix):
		return storageHostPolicy, true
	case p.Name == SecretsProvider:
		return providerPolicy, true
	case p.Name == KMSPlugin:
		return kmsPluginPolicy, true
	}
	return Document{}, false
}
